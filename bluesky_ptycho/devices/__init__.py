"""Ophyd (v1) devices: the simulated FCCD, the sample stage, the shutter."""

from .fccd import SimFCCD
from .stage import SampleStage, Shutter

__all__ = ["SampleStage", "Shutter", "SimFCCD"]
