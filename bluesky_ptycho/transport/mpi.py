"""A reconstruction spread over MPI ranks: ``mpirun -n K bluesky-ptycho reconstruct --mpi``.

Each rank reconstructs one region of the scan (:func:`~bluesky_ptycho.core.regions.split_regions`:
k-means on the positions, with an overlap of a quarter of the frame's
width: the views around a region's edge that also light its pixels), on its own
GPU where there are several (rank ``r`` uses device ``r mod n_devices``).
After every iteration the ranks merge the object: each pixel becomes the
illumination-weighted mean of the ranks' objects, ``Σ_r I_r O_r / Σ_r I_r``
(a pixel no rank lights keeps its value), and the probe the frame-weighted
mean of the ranks' probes. Every rank then goes on from the merged object,
so the regions stay one image. The merge moves one object and one probe per
iteration through ``Allreduce`` (on the host). The solvers' decisions that
read the probe's change (refining positions once it has settled, restarting
the object once: ``object_restart``) read the merged probe's change, the
same number on every rank, so the ranks decide alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import to_numpy
from bluesky_ptycho.core.regions import split_regions
from bluesky_ptycho.core.solvers import Solver


class RegionMerge:
    """Keeps the ranks' solvers one reconstruction (see the module docstring).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    solver : Solver
        This rank's solver, loaded with every frame of the scan.
    overlap_px : float, optional
        Extra positions each region takes, in object pixels (default: a
        quarter of the frame width).
    """

    def __init__(self, comm: Any, solver: Solver, overlap_px: float | None = None) -> None:
        self.comm = comm
        self.solver = solver
        h, w = solver.frame_shape
        overlap = max(h, w) / 4 if overlap_px is None else float(overlap_px)
        regions = split_regions(solver.positions, comm.size, overlap)
        self.region = regions[comm.rank]
        self.sizes = [len(r) for r in regions]
        keep = np.zeros(len(solver.weights), bool)
        keep[self.region] = True
        solver.weights[~keep] = 0
        self._probe = to_numpy(solver.probe).copy()  # the merged probe of the last iteration

    def iterate(self, iterations: int = 1) -> list[float]:
        """Iterate this rank's region and merge after each iteration; the global data error."""
        from mpi4py import MPI

        out = []
        s, xp = self.solver, self.solver.xp
        for _ in range(iterations):
            err = s.iterate(1)
            local = np.array([err[0] if err else 0.0, float(len(self.region))])
            total = np.empty_like(local)
            weighted = np.array([local[0] * local[1], local[1]])
            self.comm.Allreduce(weighted, total, op=MPI.SUM)
            illum = to_numpy(s.illumination()).astype(np.float32)
            num = (illum * to_numpy(s.object)).astype(np.complex64)
            self.comm.Allreduce(MPI.IN_PLACE, num, op=MPI.SUM)
            self.comm.Allreduce(MPI.IN_PLACE, illum, op=MPI.SUM)
            lit = illum > 1e-6 * float(illum.max())
            merged = np.where(lit, num / np.maximum(illum, 1e-30), to_numpy(s.object))
            s.object = xp.asarray(merged.astype(np.complex64))
            probe = to_numpy(s.probe) * np.float32(len(self.region))
            self.comm.Allreduce(MPI.IN_PLACE, probe, op=MPI.SUM)
            probe /= np.float32(sum(self.sizes))
            s.probe = xp.asarray(probe.astype(np.complex64))
            if s.probe_changes:  # the merged probe's change: the same on every rank
                norm = max(float(np.linalg.norm(probe)), 1e-30)
                s.probe_changes[-1] = float(np.linalg.norm(probe - self._probe)) / norm
            self._probe = probe
            e = float(total[0] / max(total[1], 1.0))
            s.errors[-1] = e
            out.append(e)
        return out


def select_device(comm: Any, xp: Any) -> None:
    """Rank *r* takes GPU ``r mod n`` (CuPy); nothing on the CPU."""
    if xp.__name__ == "cupy":
        n = xp.cuda.runtime.getDeviceCount()
        xp.cuda.Device(comm.rank % n).use()
