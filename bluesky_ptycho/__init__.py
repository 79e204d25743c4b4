"""Live ptychography in Bluesky.

Importing this package is cheap: it does not import Qt, napari, CuPy, bluesky or
ophyd. Sub-packages:

``core``       pure array code (NumPy in → NumPy out, CuPy in → CuPy out)
``io``         CXI and HDF5 files (h5py)
``devices``    Ophyd devices: the simulated FCCD, the sample stage, the shutter
``callbacks``  the processing stages (event-model DocumentRouters)
``plugins``    the stage registry (entry-point group ``bluesky_ptycho.stages``)
``plans``      bluesky plans (``ptycho_scan``)
``cli``        the ``bluesky-ptycho`` command
"""

__version__ = "0.1.0"
