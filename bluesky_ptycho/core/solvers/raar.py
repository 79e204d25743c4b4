"""RAAR (Luke 2005) and the difference map (Thibault et al. 2009)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, ifft2
from bluesky_ptycho.core.ptycho import (
    scatter_add,
)
from bluesky_ptycho.core.solvers.base import FrameStore, Solver, _blocks
from bluesky_ptycho.core.solvers.options import DmOptions, RaarOptions


class RAAR(Solver):
    """Relaxed averaged alternating reflections on stored exit waves (``beta = 1``: DM)."""

    name = "raar"
    Options = RaarOptions
    stored_waves = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.probe.shape[0]
        self.waves = FrameStore(
            self.xp,
            len(self.weights),
            (m, *self.frame_shape),
            np.complex64,
            self.amplitudes.on_device,
        )
        self._support = self._probe_support()

    def _frames_added(self, idx: np.ndarray) -> None:
        counts = self.amplitudes.get(idx)
        brightest = float(self.xp.max(self.xp.sum(counts**2, axis=(1, 2))))
        if brightest > self._max_counts:
            self._max_counts = brightest
        # a new (or re-measured) frame starts from the current model's exit wave
        _c, _r, probes, patches = self._views(idx)
        self.waves.put(idx, probes * patches[:, None])

    def _points_added(self, n_new: int) -> None:
        self.waves.grow(n_new)

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: RaarOptions = self.options  # type: ignore[assignment]
        blocks = _blocks(measured, opt.block_size)
        for _ in range(opt.overlap_iterations):
            self._object_from_waves(blocks)
            if self._update_probe:
                self._probe_from_waves(blocks)
        err = xp.zeros(2, dtype=xp.float64)
        beta = np.float32(opt.beta)
        for idx in blocks:
            _c, _r, probes, patches = self._views(idx)
            model = probes * patches[:, None]  # P_O ψ
            psi = self.waves.get(idx)
            reflected = 2 * model - psi  # R_O ψ
            far = fft2(reflected)
            amp_meas = self.amplitudes.get(idx)
            projected = ifft2(far * self._relaxed_scale(far, amp_meas))  # P_F R_O ψ
            self.waves.put(idx, beta * (psi + projected - model) + (1 - beta) * model)
            _s, e = self._modulus(fft2(model), amp_meas)
            err += e
        return float(err[0]) / max(float(err[1]), 1e-30)

    def _relaxed_scale(self, far: Array, meas: Array) -> Array:
        """The modulus constraint's factor on *far* (B, M, H, W), with Fourier relaxation."""
        xp = self.xp
        amp = xp.sqrt(xp.sum(far.real**2 + far.imag**2, axis=1))
        dev = xp.where(self.mask, amp - meas, 0)
        relax = self.options.fourier_relax  # type: ignore[attr-defined]
        if relax:
            h, w = self.frame_shape
            bound = 0.25 * relax**2 * self._max_counts / (h * w)
            err = xp.mean(dev**2, axis=(1, 2), keepdims=True)
            keep = xp.sqrt(xp.minimum(bound / xp.maximum(err, 1e-30), 1))
            dev = dev * keep.astype(xp.float32)  # the deviation left: within the bound
        else:
            dev = 0
        target = meas + dev
        scale = xp.where(self.mask, target / xp.maximum(amp, 1e-12), 1).astype(xp.float32)
        return scale[:, None]

    _max_counts: float = 0.0

    def _object_from_waves(self, blocks: list[np.ndarray]) -> None:
        xp = self.xp
        num = xp.zeros(self.object.shape, dtype=xp.complex64)
        den = xp.zeros(self.object.shape, dtype=xp.float32)
        for idx in blocks:
            corners, _r, probes, _p = self._views(idx)
            psi = self.waves.get(idx)
            scatter_add(num, corners, xp.sum(xp.conj(probes) * psi, axis=1))
            scatter_add(den, corners, xp.sum(xp.abs(probes) ** 2, axis=1).astype(xp.float32))
        lit = den > 0
        reg = self.options.regularization * float(xp.max(den))  # type: ignore[attr-defined]
        obj = num / (den + reg)
        # keep the scale on the probe: the illumination-weighted mean |O| is 1
        # (object × a, probe ÷ a give the same model; left free, the two drift)
        c = float(xp.sum(den * xp.abs(obj)) / max(float(xp.sum(den)), 1e-30))
        if c > 0:
            obj /= np.float32(c)
            self.probe *= np.float32(c)
        self.object = xp.where(lit, obj, self.object).astype(xp.complex64)

    def _probe_from_waves(self, blocks: list[np.ndarray]) -> None:
        xp = self.xp
        num = xp.zeros(self.probe.shape, dtype=xp.complex64)
        den = xp.zeros(self.frame_shape, dtype=xp.float32)
        for idx in blocks:
            _c, ramps, _pr, patches = self._views(idx)
            num += self._probe_direction(patches, self.waves.get(idx), ramps)
            o2 = (patches.real**2 + patches.imag**2).astype(xp.float32)
            if ramps is None:
                den += xp.sum(o2, axis=0)
            else:  # |O_j|² seen from the probe's frame: shifted back like the numerator
                den += ifft2(xp.sum(fft2(o2) * xp.conj(ramps), axis=0)).real
        reg = self.options.regularization * float(xp.max(den))  # type: ignore[attr-defined]
        self.probe = (num / (den + reg) * self._support).astype(xp.complex64)

    def _probe_support(self) -> Array:
        """Soft circular mask of radius ``probe_support`` × the frame side (ones when 0)."""
        frac = self.options.probe_support  # type: ignore[attr-defined]
        h, w = self.frame_shape
        if not frac:
            return self.xp.ones((h, w), dtype=self.xp.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
        edge = np.clip((frac - r) * max(h, w) / 2 + 0.5, 0, 1)  # soft by two pixels
        return self.xp.asarray(edge.astype(np.float32))


class DifferenceMap(RAAR):
    """The difference map (Thibault et al. 2009): RAAR with ``beta = 1``."""

    name = "dm"
    Options = DmOptions
