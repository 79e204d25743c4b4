"""Files: the FCCD's HDF5 frame files and CXI 1.6 (h5py)."""
