"""Offline reconstruction of a CXI 1.6 ptychography file: ``bluesky-ptycho reconstruct``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_ptycho.core import metrics
from bluesky_ptycho.core.arrays import backend, to_numpy
from bluesky_ptycho.core.geometry import wavelength_m
from bluesky_ptycho.core.solvers import Solver
from bluesky_ptycho.core.solvers.options import MAX_ITERATION
from bluesky_ptycho.core.solvers.setup import low_flux, scan_grid, setup_solver
from bluesky_ptycho.core.stxm import probe_estimate
from bluesky_ptycho.io.cxi import CxiData, read_cxi, write_cxi


@dataclass
class ReconstructResult:
    """What :func:`reconstruct_cxi` did.

    Attributes
    ----------
    output : Path
    algorithm : str
    iterations : int
    errors : list of float
        Data error per iteration.
    seconds : float
        Time spent iterating.
    object_pixel_size_m : float
    probe_source : str
        Where the starting probe came from.
    ranks : int
        MPI ranks the scan was split over (1: one process).
    stopped_by : str
        Why iterating ended: the convergence stop, or the count.
    left_out : int
        Frames left out because they hold NaN or infinite values.
    object_restarted_at : int or None
        The iteration in which the object restarted flat (the solvers' ``object_restart``).
    """

    output: Path
    algorithm: str
    iterations: int
    errors: list[float]
    seconds: float
    object_pixel_size_m: float
    probe_source: str
    ranks: int = 1
    stopped_by: str = ""
    left_out: int = 0
    object_restarted_at: int | None = None


def prepare(
    data: CxiData,
    algorithm: str = "rpie",
    modes: int = 1,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    source: str = "the CXI file",
    grid_from_m: np.ndarray | None = None,
    defocus_m: float = 0.0,
) -> tuple[Solver, float, str]:
    """A solver loaded with the frames of *data*; also the object pixel size (m) and the probe's origin.

    The object grid holds the views at *grid_from_m* (default: the frames' own positions).
    Without a probe guess in the file, the probe is estimated from the mean
    pattern and propagated by *defocus_m* (the sample's distance from the focus).

    Raises
    ------
    ValueError
        For inconsistent geometry (non-square object pixels, frames not 2-D),
        naming the HDF5 path.
    """
    xp = backend(device)
    frames = data.frames
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(
            f"{source}: entry_1/data_1/data has shape {frames.shape}; expected (N, H, W) frames"
        )
    n, h, w = frames.shape
    lam = wavelength_m(data.energy_ev)
    py, px = data.pixel_size_m
    dy, dx = lam * data.distance_m / (h * py), lam * data.distance_m / (w * px)
    if not np.isclose(dy, dx, rtol=1e-6):
        raise ValueError(
            f"{source}: object pixels would be {dy:.4g} m × {dx:.4g} m (from the frame shape "
            f"{(h, w)} and y/x_pixel_size {py:.4g}/{px:.4g} m); only square object pixels are "
            "supported: crop the frames to a shape whose sides × pixel sizes agree"
        )
    positions_m = np.asarray(data.translations_m, np.float64)[:, :2]
    if not np.isfinite(positions_m).all():
        raise ValueError(f"{source}: entry_1/data_1/translation holds NaN or infinite values")
    finite = np.isfinite(frames).all(axis=(1, 2))  # frames with NaN/inf pixels are left out
    if not finite.any():
        raise ValueError(f"{source}: every frame of entry_1/data_1/data holds NaN or inf values")
    # the grid is checked (its size against the memory) before anything big is allocated
    grid = scan_grid(positions_m if grid_from_m is None else grid_from_m, dx, max(h, w))
    counts = np.where(finite, np.nan_to_num(frames.sum(axis=(1, 2))), 0.0)
    dark = finite & low_flux(np.where(finite, counts, np.median(counts[finite])))
    mean_counts = (
        float(counts[finite & ~dark].mean())
        if (finite & ~dark).any()
        else float(counts[finite].mean())
    )
    if data.illumination is not None:
        probe = np.asarray(data.illumination, np.complex64)
        if probe.ndim not in (2, 3) or not np.isfinite(probe).all():
            raise ValueError(
                f"{source}: entry_1/instrument_1/source_1/illumination must be a finite (H, W) or "
                f"(modes, H, W) array; it has shape {probe.shape}"
            )
        if probe.shape[-2:] != (h, w):
            raise ValueError(
                f"{source}: entry_1/instrument_1/source_1/illumination has shape {probe.shape}; "
                f"expected ({h}, {w}) (or (modes, {h}, {w})) to match the frames"
            )
        dark_modes = np.flatnonzero(~np.abs(probe.reshape(-1, h, w)).any(axis=(1, 2)))
        if len(dark_modes):
            which = "" if probe.ndim == 2 else f" in mode(s) {dark_modes.tolist()}"
            raise ValueError(
                f"{source}: entry_1/instrument_1/source_1/illumination is zero everywhere{which}, "
                "a probe that lights nothing; delete that dataset to start from the probe "
                "estimated from the frames, or write a probe guess there"
            )
        origin = "source_1/illumination"
    else:
        probe = to_numpy(
            probe_estimate(
                frames[finite].mean(axis=0),
                defocus_m=defocus_m,
                wavelength_m=lam,
                pixel_size_m=dx,
            )
        )
        origin = f"the mean diffraction pattern, defocus {defocus_m:.3g} m"
    mask = None if data.mask is None else np.asarray(data.mask) == 0
    made = setup_solver(
        positions_m,
        dx,
        xp.asarray(probe),
        mean_counts,
        algorithm,
        {"probe_modes": modes, **(options or {})},
        None if mask is None else xp.asarray(mask),
        grid=grid,
    )
    solver = made.solver
    for start in range(0, n, 256):  # in blocks: the host copy may be larger than the device
        idx = np.arange(start, min(n, start + 256))[finite[start : start + 256]]
        if len(idx):
            solver.add_frames(idx, xp.asarray(frames[idx]))
    if dark.any():  # a beam dump or a failed readout: left out, as the live monitor does
        solver.flag(np.flatnonzero(dark))
    return solver, dx, origin


def reconstruct_cxi(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    algorithm: str = "rpie",
    iterations: int = 200,
    modes: int = 1,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    progress: Callable[[int, float], Any] | None = None,
    defocus_m: float = 0.0,
    comm: Any = None,
    converge: bool = True,
) -> ReconstructResult:
    """Reconstruct the ptychography scan in *input_path*; write probe and object to *output_path*.

    The output holds everything the input held (frames, translations,
    geometry) plus the probe in ``entry_1/image_1/data`` and the object in
    ``entry_1/image_2/data`` with the object's pixel size (the layout
    ptychodus reads). *progress(iteration, data_error)* is called after
    each iteration. Iterating stops when the object has converged (the
    solver's :meth:`~bluesky_ptycho.core.solvers.Solver.convergence` rule
    with the options' ``stop_tolerance``), after at most *iterations*; with
    ``converge=False`` (and always with MPI) it runs them all.

    With an MPI communicator *comm* of more than one rank, each rank
    reconstructs one region of the scan and the object is merged every
    iteration (:mod:`bluesky_ptycho.transport.mpi`); rank 0 writes the file.
    """
    if not 1 <= iterations <= MAX_ITERATION:
        raise ValueError(f"--iterations {iterations}: give a number in [1, {MAX_ITERATION}]")
    ranks = 1 if comm is None else comm.size
    if ranks > 1:
        from bluesky_ptycho.transport.mpi import RegionMerge, select_device

        select_device(comm, backend(device))
    data = read_cxi(input_path)
    solver, pixel, origin = prepare(
        data, algorithm, modes, device, options, str(input_path), defocus_m=defocus_m
    )
    step = RegionMerge(comm, solver).iterate if ranks > 1 else solver.iterate
    stop = solver.convergence(tolerance=None if converge else 0.0)
    t0 = time.perf_counter()
    for _ in range(iterations):
        err = step(1)
        if progress is not None and err:
            progress(solver.iteration, err[0])
        if ranks == 1 and stop.update(solver):
            break
    seconds = time.perf_counter() - t0
    data.probe = to_numpy(solver.probe)
    data.object = to_numpy(solver.object)
    data.object_pixel_size_m = pixel
    out = Path(output_path)
    if comm is None or comm.rank == 0:
        out = write_cxi(output_path, data)
    return ReconstructResult(
        output=out,
        algorithm=solver.name,
        iterations=solver.iteration,
        errors=list(solver.errors),
        seconds=seconds,
        object_pixel_size_m=pixel,
        probe_source=origin,
        ranks=ranks,
        stopped_by=stop.reason or f"{solver.iteration} iterations",
        object_restarted_at=solver.object_restarted_at,
        left_out=int((~np.isfinite(data.frames).all(axis=(1, 2))).sum()),
    )


def half_data_frc(
    input_path: str | os.PathLike,
    algorithm: str = "rpie",
    iterations: int = 100,
    modes: int = 1,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    defocus_m: float = 0.0,
) -> metrics.FRC:
    """Fourier ring correlation of two reconstructions from the even and the odd frames.

    Both halves are reconstructed on the same object grid (the full scan's);
    the FRC is taken over the part both light well.
    """
    data = read_cxi(input_path)
    objects, regions = [], []
    for half in (0, 1):
        part = CxiData(**{**vars(data)})
        part.frames = data.frames[half::2]
        part.translations_m = data.translations_m[half::2]
        solver, _pixel, _origin = prepare(
            part,
            algorithm,
            modes,
            device,
            options,
            str(input_path),
            grid_from_m=data.translations_m[:, :2],
            defocus_m=defocus_m,
        )
        solver.iterate(iterations)
        objects.append(to_numpy(solver.object))
        regions.append(to_numpy(metrics.illuminated_region(solver.illumination(), 0.3)))
    return metrics.frc(objects[0], objects[1], regions[0] & regions[1])
