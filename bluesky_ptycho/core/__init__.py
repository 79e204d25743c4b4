"""Pure array code: simulation, FCCD geometry, dark statistics, cleaning, reconstruction.

Nothing here imports bluesky, ophyd, h5py, zmq or napari. Every function takes
arrays and returns arrays of the same kind; CuPy is only touched when the
arrays given are CuPy arrays (or ``get_xp("gpu")`` is asked for).
"""
