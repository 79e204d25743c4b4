"""Acquisition: Bluesky plans, adaptive rescans, and the feedback that pauses a scan.

- :mod:`.plans`: ``ptycho_scan`` (darks, then one frame per point)
- :mod:`.rescan`: ``RescanPlanner``, a bluesky-adaptive Optimizer over the quality verdicts
- :mod:`.feedback`: the quality verdicts → the gate device a suspender watches
"""
