"""Applications: thin programs over the layers below.

- :mod:`.demo`: a simulated scan through the real RunEngine with live reconstruction
- :mod:`.replay`: a stored run streamed through a pipeline again
- :mod:`.raw2cxi`: raw FCCD frames on disk → a cleaned CXI file
- :mod:`.reconstruct`: a CXI file → probe and object
"""
