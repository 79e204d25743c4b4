"""The napari plugin (npe2 manifest ``napari.yaml``, entry point ``napari.manifest``).

- ``Live ptychography`` dock widget (:mod:`.widget`): object phase and
  amplitude, STXM, probe modes, the current cleaned frame, the error curve,
  the pipeline's status and log, live; abort / reset / parameter controls.
  It follows an in-process :class:`~bluesky_ptycho.pipeline.runner.Pipeline`
  or a back-end's published results (:mod:`bluesky_ptycho.transport.snapshots`).
- reader (:mod:`.reader`): our CXI files, ptychodus product files, ptypy ``.ptyr``.
- ``Simulate from image`` (:mod:`.simulate`): an experiment on a sample made
  from an image layer (an SEM image, say), with a reconstruction of it.

The document-to-image logic lives in :mod:`.model` and imports neither Qt nor
napari; importing :mod:`bluesky_ptycho` never imports this package.
"""
