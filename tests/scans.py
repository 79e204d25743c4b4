"""A simulated scan written as a CXI file, for the tests that start from one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bluesky_ptycho.core.sim import SimulatedScan
from bluesky_ptycho.io.cxi import CxiData, write_cxi


def write_scan_cxi(path: Path, scan: SimulatedScan) -> Path:
    """*scan*'s frames, positions and geometry as a CXI file at *path*."""
    g = scan.geometry
    ps = g.frame_pixel_size_m
    return write_cxi(
        path,
        CxiData(
            frames=scan.intensities,
            translations_m=np.c_[scan.positions_m, np.zeros(len(scan.positions_m))],
            energy_ev=g.energy_ev,
            distance_m=g.distance_m,
            pixel_size_m=(ps, ps),
        ),
    )


def hard_scan_data(scan) -> CxiData:
    """A hard case (:mod:`bluesky_ptycho.core.sim.hard`) as a CXI file holds it: frames,
    reported positions, geometry and the starting probe a user would give."""
    return CxiData(
        frames=scan.frames,
        translations_m=np.c_[scan.positions_m, np.zeros(len(scan.frames))],
        energy_ev=scan.energy_ev,
        distance_m=scan.distance_m,
        pixel_size_m=(scan.pixel_m, scan.pixel_m),
        illumination=scan.start_probe,
    )
