"""Least-squares maximum likelihood (Odstrčil, Menzel & Guizar-Sicairos 2018)."""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, get_xp, ifft2
from bluesky_ptycho.core.ptycho import (
    extract_patches,
    scatter_add,
)
from bluesky_ptycho.core.solvers.base import Solver, _blocks, _clear
from bluesky_ptycho.core.solvers.options import LsqmlOptions


class LSQML(Solver):
    """Least-squares maximum likelihood with mini-batches (Gaussian or Poisson noise)."""

    name = "lsqml"
    Options = LsqmlOptions

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: LsqmlOptions = self.options  # type: ignore[assignment]
        update_probe = self._update_probe
        refine = self._refine_positions
        gamma = np.float32(self.step_scale)
        err = xp.zeros(2, dtype=xp.float64)
        illum = xp.zeros(self.object.shape, dtype=xp.float32)
        num = xp.zeros(self.object.shape, dtype=xp.complex64)
        for idx in _blocks(self._rng.permutation(measured), opt.batch_size):
            corners, ramps, probes, patches = self._views(idx)
            psi = probes * patches[:, None]
            far = fft2(psi)
            meas = self.amplitudes.get(idx)
            scale, e = self._modulus(far, meas)
            err += e
            if opt.noise == "gaussian":
                chi = ifft2(far * scale) - psi
            else:
                chi = ifft2(far * self._poisson_factor(far, meas))

            # preconditioned object direction over the batch
            local = self._illumination_at_views(illum, corners, probes)
            local = local + opt.regularization * xp.max(local)
            grad = xp.sum(xp.conj(probes) * chi, axis=1)
            scatter_add(num, corners, grad)
            # the direction D = Σ conj(P) χ / (Σ|P|² + δ) on the object, seen at each view
            d_obj = extract_patches(num, corners, self.frame_shape) / local
            _clear(num, corners, self.frame_shape)
            a = probes * d_obj[:, None]  # exit-wave change along the object direction

            if update_probe:
                o2 = xp.sum(patches.real**2 + patches.imag**2, axis=0)
                d_probe = self._probe_direction(patches, chi, ramps) / (
                    o2 + opt.regularization * xp.max(o2)
                )
                shifted = (
                    d_probe[None] if ramps is None else ifft2(fft2(d_probe)[None] * ramps[:, None])
                )
                b = shifted * patches[:, None]
                alpha_o, alpha_p = _two_steps(a, b, chi, opt.max_step)
                self.probe += (gamma * alpha_p * d_probe).astype(xp.complex64)
            else:
                alpha_o = _one_step(a, chi, opt.max_step)
            if refine:
                self._position_step(idx, probes, patches, chi)
            # each view adds its share of D (the shares sum to D where views overlap)
            scatter_add(self.object, corners, (gamma * alpha_o)[:, None, None] * (grad / local))
        return float(err[0]) / max(float(err[1]), 1e-30)

    def _poisson_factor(self, far: Array, meas: Array) -> Array:
        """``α_j (I/Ĩ − 1)``: the Poisson likelihood's descent direction in the detector.

        ``α_j`` minimises the likelihood of view *j* along it (three Newton
        steps on ``Σ Ĩ(1+αr)² − I log Ĩ(1+αr)²``, kept in [0, 1]).
        """
        xp = self.xp
        model = xp.sum(far.real**2 + far.imag**2, axis=1)
        counts = meas**2
        floor = 1e-3 * xp.mean(model, axis=(1, 2), keepdims=True)
        r = xp.where(self.mask, counts / (model + floor) - 1, 0).astype(xp.float32)
        alpha = xp.zeros((len(model), 1, 1), dtype=xp.float32)
        for _ in range(3):
            u = 1 + alpha * r
            u = xp.maximum(u, 1e-3)
            g = xp.sum(2 * model * r * u - 2 * counts * r / u, axis=(1, 2), keepdims=True)
            hss = xp.sum(2 * model * r**2 + 2 * counts * r**2 / u**2, axis=(1, 2), keepdims=True)
            alpha = xp.clip(alpha - g / xp.maximum(hss, 1e-30), 0, 1)
        return (alpha * r)[:, None]


def _one_step(a: Array, chi: Array, max_step: float) -> Array:
    """Per-view step (B,) along *a* that best explains *chi* (least squares), averaged."""
    xp = get_xp(a)
    axes = tuple(range(1, a.ndim))
    aa = xp.sum(xp.abs(a) ** 2, axis=axes)
    ab = xp.sum((xp.conj(a) * chi).real, axis=axes)
    step = xp.clip(ab / xp.maximum(aa, 1e-30), 0, max_step)
    return xp.full(len(step), xp.mean(step), dtype=xp.float32)


def _two_steps(a: Array, b: Array, chi: Array, max_step: float) -> tuple[Array, Array]:
    """Per-view steps along object (*a*) and probe (*b*) changes solving the 2 × 2 least squares.

    Returns the object steps (B,) (their batch mean for every view, as
    LSQ-ML's mini-batch form) and the probe's scalar step (their mean).
    """
    xp = get_xp(a)
    axes = tuple(range(1, a.ndim))
    aa = xp.sum(xp.abs(a) ** 2, axis=axes)
    bb = xp.sum(xp.abs(b) ** 2, axis=axes)
    ab = xp.sum((xp.conj(a) * b).real, axis=axes)
    ac = xp.sum((xp.conj(a) * chi).real, axis=axes)
    bc = xp.sum((xp.conj(b) * chi).real, axis=axes)
    det = aa * bb - ab**2
    ok = det > 1e-6 * aa * bb
    so = xp.where(ok, (bb * ac - ab * bc) / xp.where(ok, det, 1), ac / xp.maximum(aa, 1e-30))
    sp = xp.where(ok, (aa * bc - ab * ac) / xp.where(ok, det, 1), 0)
    so = xp.clip(so, 0, max_step)
    sp = xp.clip(sp, 0, max_step)
    return xp.full(len(so), xp.mean(so), dtype=xp.float32), xp.mean(sp).astype(xp.float32)
