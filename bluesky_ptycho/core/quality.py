"""Data quality: which frames are bad, and whether the sample drifts (pure array code).

The quality monitor stage (:mod:`bluesky_ptycho.callbacks.quality`) calls
these on what the pipeline already computes — each cleaned frame's photon
count, each frame's data error against the live model, the live object and
probe — so judging quality costs almost nothing beside the reconstruction.

Dimensions: N scan points, K recent frames, (Y, X) object, (M, H, W) probe modes.
"""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, get_xp, ifft2, to_numpy


def low_flux(photons: Array, reference: float, fraction: float) -> np.ndarray:
    """Frames whose photon count is below *fraction* of *reference* (a beam dump, a closed
    shutter, a lost top-up).

    Parameters
    ----------
    photons : (K,) float
        Photons in each cleaned frame.
    reference : float
        Photons a frame has with the beam on (the median of recent good frames).
    fraction : float
        In (0, 1).

    Returns
    -------
    (K,) bool
    """
    if not 0 < fraction < 1:
        raise ValueError(f"low-flux fraction={fraction!r} must lie in (0, 1), e.g. 0.5")
    p = np.asarray(to_numpy(photons), dtype=np.float64)
    return ~(p >= fraction * reference)  # NaN counts are low


def error_outliers(
    errors: Array, positions: Array, neighbours: int = 8, factor: float = 4.0
) -> np.ndarray:
    """Frames whose data error is far above their neighbours' (a corrupted or mis-placed frame).

    A frame is an outlier when its error exceeds *factor* times the median
    error of its *neighbours* nearest measured points. Frames with NaN error
    (not measured) are never outliers and never neighbours.

    Parameters
    ----------
    errors : (N,) float
        Each frame's data error (:meth:`bluesky_ptycho.core.solvers.Solver.frame_errors`).
    positions : (N, 2) float
        Scan positions (any unit, the same for all).
    neighbours : int
        Nearest points compared with (>= 1).
    factor : float
        How many times the neighbours' median makes an outlier (> 1).

    Returns
    -------
    (N,) bool
    """
    if neighbours < 1 or not factor > 1:
        raise ValueError(
            f"error_outliers: neighbours={neighbours} must be >= 1 and factor={factor} > 1"
        )
    e = np.asarray(to_numpy(errors), dtype=np.float64)
    pos = np.asarray(to_numpy(positions), dtype=np.float64)[: len(e)]
    out = np.zeros(len(e), dtype=bool)
    ok = np.flatnonzero(np.isfinite(e))
    if len(ok) <= neighbours:
        return out
    p = pos[ok]
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    near = np.argpartition(d2, neighbours - 1, axis=1)[:, :neighbours]
    local = np.median(e[ok][near], axis=1)
    out[ok] = e[ok] > factor * np.maximum(local, 1e-12)
    return out


def transmission_map(obj: Array, probe: Array) -> Array:
    """What a STXM detector sees at each probe corner: ``Σ |P|² |O|²`` over the view, / ``Σ |P|²``.

    Parameters
    ----------
    obj : (Y, X) complex
    probe : (H, W) or (M, H, W) complex

    Returns
    -------
    (Y - H + 1, X - W + 1) float32
        Value at the view whose top-left corner is at that pixel.
    """
    xp = get_xp(obj)
    p2 = xp.abs(xp.asarray(probe)) ** 2
    if p2.ndim == 3:
        p2 = p2.sum(axis=0)
    h, w = p2.shape
    o2 = (xp.abs(obj) ** 2).astype(xp.float32)
    ny, nx = o2.shape
    kernel = xp.zeros((ny, nx), xp.float32)
    kernel[:h, :w] = p2 / xp.sum(p2)
    corr = ifft2(fft2(o2) * xp.conj(fft2(kernel))).real  # corr[r] = Σ_u k(u) o2(r + u)
    return corr[: ny - h + 1, : nx - w + 1].astype(xp.float32)


def drift_estimate(transmission: Array, corners_px: Array, predicted: Array) -> tuple[float, float]:
    """The shift (rows, columns; object pixels) of the sample since the model was made.

    The STXM transmission of recent frames is compared with the transmission
    the current reconstruction predicts at their planned positions: if the
    sample moved by d, frame i saw ``T(r_i + d)``. Linearised,
    ``t_i ≈ a T(r_i) + ∇T(r_i) · (a d) + c``; the least-squares a, c and a·d
    give d. Meaningful while the shift is under the probe size and the
    recent frames see structure (else the gradients vanish and the result
    is 0).

    Parameters
    ----------
    transmission : (K,) float
        Measured transmission (photons) of the recent frames.
    corners_px : (K, 2) float
        Their planned view corners in object pixels (row, column).
    predicted : (Y', X') float
        :func:`transmission_map` of the current reconstruction.

    Returns
    -------
    (float, float)
    """
    t = np.asarray(to_numpy(transmission), dtype=np.float64)
    pos = np.asarray(to_numpy(corners_px), dtype=np.float64).reshape(-1, 2)
    tmap = np.asarray(to_numpy(predicted), dtype=np.float64)
    if len(t) < 4:
        return 0.0, 0.0
    gy, gx = np.gradient(tmap)
    tv, gyv, gxv = (_bilinear(np.asarray(m), pos) for m in (tmap, gy, gx))
    ok = np.isfinite(tv) & np.isfinite(t)
    if ok.sum() < 4:
        return 0.0, 0.0
    a_mat = np.stack([tv, gyv, gxv, np.ones_like(tv)], axis=1)[ok]
    scale = np.abs(a_mat).max(axis=0)
    if (scale[1:3] < 1e-12).any():
        return 0.0, 0.0
    coef, *_ = np.linalg.lstsq(a_mat / scale, t[ok], rcond=None)
    coef = coef / scale
    a = coef[0]
    if not abs(a) > 1e-12:
        return 0.0, 0.0
    return float(coef[1] / a), float(coef[2] / a)


def _bilinear(m: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """*m* at fractional (row, col) positions; NaN outside."""
    ny, nx = m.shape
    y, x = pos[:, 0], pos[:, 1]
    inside = (y >= 0) & (x >= 0) & (y <= ny - 1) & (x <= nx - 1)
    y0 = np.clip(np.floor(y).astype(int), 0, max(ny - 2, 0))
    x0 = np.clip(np.floor(x).astype(int), 0, max(nx - 2, 0))
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    v = (
        m[y0, x0] * (1 - fy) * (1 - fx)
        + m[y1, x0] * fy * (1 - fx)
        + m[y0, x1] * (1 - fy) * fx
        + m[y1, x1] * fy * fx
    )
    return np.where(inside, v, np.nan)
