"""Mini-batch ePIE/rPIE (Maiden, Johnson & Li 2017)."""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.core.arrays import fft2, ifft2
from bluesky_ptycho.core.ptycho import (
    scatter_add,
)
from bluesky_ptycho.core.solvers.base import Solver, _blocks
from bluesky_ptycho.core.solvers.options import RpieOptions


class RPIE(Solver):
    """Mini-batch ePIE/rPIE with mixed-state probes and position refinement."""

    name = "rpie"
    Options = RpieOptions

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: RpieOptions = self.options  # type: ignore[assignment]
        update_probe = self._update_probe
        refine = self._refine_positions
        gamma = np.float32(self.step_scale)
        den = xp.zeros(self.object.shape, dtype=xp.float32)
        err = xp.zeros(2, dtype=xp.float64)
        for idx in _blocks(self._rng.permutation(measured), opt.batch_size):
            corners, ramps, probes, patches = self._views(idx)
            psi = probes * patches[:, None]
            far = fft2(psi)
            scale, e = self._modulus(far, self.amplitudes.get(idx))
            err += e
            chi = ifft2(far * scale) - psi  # ψ' − ψ

            # Object step: rPIE's preconditioner with the batch's summed
            # illumination, gathered back at each view so overlaps add up right.
            local = self._illumination_at_views(den, corners, probes)
            denom = (1 - opt.alpha) * local + opt.alpha * xp.max(local)
            obj_step = xp.sum(xp.conj(probes) * chi, axis=1) * (gamma / denom)

            if update_probe:
                dprobe = self._probe_direction(patches, chi, ramps)
                pden = xp.sum(patches.real**2 + patches.imag**2, axis=0)
                pstep = gamma / ((1 - opt.beta) * pden + opt.beta * xp.max(pden))
                self.probe += (dprobe * pstep).astype(xp.complex64)
            if refine:
                self._position_step(idx, probes, patches, chi)
            scatter_add(self.object, corners, obj_step)
        return float(err[0]) / max(float(err[1]), 1e-30)
