"""Simulated ptychography: zone-plate probe, test object, scan patterns, raw FCCD frames.

The physics of the simulated FCCD device lives here, as plain functions and
one small class; the Ophyd device in :mod:`bluesky_ptycho.devices` is glue.
Random numbers come from a NumPy ``Generator`` the caller owns, so a seeded
simulation is reproducible.

- :mod:`.optics`: the zone-plate probe
- :mod:`.sample`: test objects
- :mod:`.detector`: raw FCCD frames with their defects
- :mod:`.scan`: scan patterns and whole simulated scans
"""

from __future__ import annotations

from bluesky_ptycho.core.sim.detector import FCCDDefects, FCCDNoiseModel, RawTruth
from bluesky_ptycho.core.sim.optics import fzp_probe
from bluesky_ptycho.core.sim.sample import SimulatedSample, object_from_image, test_object
from bluesky_ptycho.core.sim.scan import (
    GOLDEN_ANGLE_DEG,
    SimulatedScan,
    downsample_to_frame,
    fermat_positions,
    raster_positions,
    scan_positions,
    simulate_scan,
)

__all__ = [
    "GOLDEN_ANGLE_DEG",
    "FCCDDefects",
    "FCCDNoiseModel",
    "RawTruth",
    "SimulatedSample",
    "SimulatedScan",
    "downsample_to_frame",
    "fermat_positions",
    "fzp_probe",
    "object_from_image",
    "raster_positions",
    "scan_positions",
    "simulate_scan",
    "test_object",
]
