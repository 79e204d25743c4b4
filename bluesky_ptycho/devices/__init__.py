"""Ophyd (v1) devices: the simulated FCCD, the sample stage, the shutter."""

from bluesky_ptycho.devices.fccd import SimFCCD
from bluesky_ptycho.devices.stage import SampleStage, Shutter

__all__ = ["SampleStage", "Shutter", "SimFCCD"]
