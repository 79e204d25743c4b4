"""Ophyd (v1) devices: the simulated FCCD, the sample stage, the shutter.

The EPICS ones (:mod:`bluesky_ptycho.devices.epics`) are imported from there:
they need a Channel Access client (caproto, or pyepics).
"""

from bluesky_ptycho.devices import pvs
from bluesky_ptycho.devices.fccd import SimFCCD
from bluesky_ptycho.devices.stage import SampleStage, Shutter

__all__ = ["SampleStage", "Shutter", "SimFCCD", "pvs"]
