"""One solver set-up for every caller: the object grid, the probe at the data's scale, the options.

``bluesky-ptycho reconstruct`` (:func:`bluesky_ptycho.apps.reconstruct.prepare`)
and the streaming reconstruction stage both call :func:`setup_solver`, so the
defaults a user gets without options live here and in the options' declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import Array, get_xp
from bluesky_ptycho.core.ptycho import ObjectGrid, object_grid, probe_from_counts
from bluesky_ptycho.core.solvers.base import Solver
from bluesky_ptycho.core.solvers.registry import make_options, solver_class

#: spare object pixels around the scan (room for position errors and drift)
MARGIN_PX = 16
#: a frame with fewer counts than this fraction of the scan's median is left out
#: (a beam dump or a failed readout: fitting it would pull the object dark)
LOW_FLUX = 0.1


@dataclass
class SolverSetup:
    """What :func:`setup_solver` made.

    Attributes
    ----------
    solver : Solver
        Allocated for every point, no frames yet.
    grid : ObjectGrid
        Where the object array sits (positions in m → view corners).
    positions_px : (N, 2) float64
        The view corners of the points.
    """

    solver: Solver
    grid: ObjectGrid
    positions_px: np.ndarray


def setup_solver(
    positions_m: np.ndarray,
    pixel_size_m: float,
    probe: Array,
    mean_counts: float | None = None,
    algorithm: str = "rpie",
    options: dict[str, Any] | None = None,
    detector_mask: Array | None = None,
    grid_from_m: np.ndarray | None = None,
    grid: ObjectGrid | None = None,
    corners: np.ndarray | None = None,
) -> SolverSetup:
    """A solver for a scan: object grid, probe scaled to the counts, options by name.

    Parameters
    ----------
    positions_m : (N, 2) float
        Stage positions (x, y) in m of every point.
    pixel_size_m : float
        Object pixel size.
    probe : (H, W) or (M, H, W) complex array
        Starting probe; its array module is the solver's.
    mean_counts : float, optional
        Mean photons of a frame: the probe is scaled so that ``Σ|P|²`` equals
        it (None: the probe already carries the data's scale).
    algorithm : str
    options : dict, optional
        The solver's options by name (unknown names raise ``ValueError``).
    detector_mask : (H, W) bool, optional
        False where detector pixels are invalid.
    grid_from_m : (K, 2) float, optional
        Positions the object grid must hold (default *positions_m*).
    grid : ObjectGrid, optional
        The object grid, made before (by :func:`scan_grid`): used as it is.
    corners : (N, 2) float, optional
        View corners on *grid* (default: *positions_m* converted), e.g. with
        points added since the grid was made.
    """
    xp = get_xp(probe)
    h, w = probe.shape[-2:]
    pos = np.asarray(positions_m, np.float64)[:, :2]
    if grid is None:
        grid = scan_grid(pos if grid_from_m is None else grid_from_m, pixel_size_m, max(h, w))
    if mean_counts is not None:
        probe = probe_from_counts(probe, mean_counts)
    opts = make_options(algorithm, **(options or {}))
    corners = grid.to_pixels(pos) if corners is None else np.asarray(corners, np.float64)
    solver = solver_class(algorithm)(
        corners,
        grid.shape,
        xp.asarray(probe),
        opts,
        None if detector_mask is None else xp.asarray(detector_mask, dtype=bool),
    )
    return SolverSetup(solver, grid, corners)


def scan_grid(positions_m: np.ndarray, pixel_size_m: float, frame_px: int) -> ObjectGrid:
    """The object grid of a scan: every view, and :data:`MARGIN_PX` to spare on each side."""
    return object_grid(np.asarray(positions_m, np.float64)[:, :2], pixel_size_m, frame_px,
                       margin_px=MARGIN_PX)  # fmt: skip


def low_flux(counts: np.ndarray, fraction: float = LOW_FLUX) -> np.ndarray:
    """Frames whose total *counts* (N,) fall below *fraction* of the median: (N,) bool."""
    c = np.asarray(counts, np.float64)
    if not len(c):
        return np.zeros(0, bool)
    return c < fraction * float(np.median(c))
