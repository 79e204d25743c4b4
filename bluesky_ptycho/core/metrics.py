"""Quality metrics of a reconstruction."""

from __future__ import annotations

from ._array import Array, get_xp


def object_error(
    estimate: Array, truth: Array, region: Array | None = None, remove_scale: bool = True
) -> float:
    """Relative error of an object against the truth, ambiguities removed.

    ``‖c·estimate − truth‖ / ‖truth‖`` over *region*, with ``c`` the complex
    factor that minimises it: its phase removes the global phase, its modulus
    the global amplitude scale, which ptychography does not determine (object
    × a, probe ÷ a give the same data). With ``remove_scale=False`` only the
    phase is removed.

    Parameters
    ----------
    estimate, truth : (Y, X) complex arrays, same grid
    region : (Y, X) bool array, optional
        Pixels to compare (the well-illuminated part of the scan).
    """
    xp = get_xp(estimate)
    e = estimate if region is None else estimate[region]
    t = xp.asarray(truth) if region is None else xp.asarray(truth)[region]
    inner = xp.vdot(e, t)
    c = inner / xp.vdot(e, e) if remove_scale else inner / abs(inner)
    return float(xp.linalg.norm(c * e - t) / xp.linalg.norm(t))


def illuminated_region(illumination: Array, fraction: float = 0.1) -> Array:
    """Pixels where the summed illumination exceeds *fraction* of its maximum."""
    return illumination > fraction * illumination.max()
