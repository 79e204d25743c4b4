"""Live ptychography in Bluesky.

Importing this package is cheap: it does not import Qt, napari, CuPy, bluesky or
ophyd. The sub-packages are layers; each imports only those below it (checked by
import-linter in ``make test``):

=================================  ============================================================
``cli``, ``viewer``                the ``bluesky-ptycho`` command; the napari plugin
``apps``                           demo, replay, raw2cxi, reconstruct
``transport``                      ZeroMQ: publisher, ``serve``, control, snapshots; MPI
``pipeline``, ``acquisition``      pipeline files and the runner, Dask; plans, rescans, feedback
``callbacks``                      the built-in stages and their background-iteration driver
``plugins``, ``storage``,          the stage API and registry; catalog, spool, paths, logs;
``devices``                        Ophyd devices
``io``, ``threads``                CXI, HDF5 frames, the document codec; the worker-thread idiom
``core``                           pure array code (NumPy in → NumPy out, CuPy in → CuPy out)
=================================  ============================================================
"""

__version__ = "0.2.0"
