"""Lengths in the units an operator reads, and metres for the computations.

A motor reports its position in its engineering units (an EPICS motor record's
EGU field, e.g. ``um``); the processing works in metres. :func:`metres_per_unit`
is the one place that knows the conversion.
"""

from __future__ import annotations

METRES_PER_UNIT: dict[str, float] = {
    "m": 1.0,
    "mm": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,  # MICRO SIGN
    "μm": 1e-6,  # GREEK SMALL LETTER MU
    "micron": 1e-6,
    "microns": 1e-6,
    "nm": 1e-9,
}


def metres_per_unit(unit: str | None) -> float:
    """Metres in one *unit* (``"um"`` → 1e-6); None or ``""`` mean metres.

    Raises ``ValueError`` naming the unit and the ones understood.
    """
    if unit is None or str(unit).strip() == "":
        return 1.0
    u = str(unit).strip()
    scale = METRES_PER_UNIT.get(u, METRES_PER_UNIT.get(u.lower()))
    if scale is None:
        raise ValueError(
            f"length unit {unit!r} is not known; use one of {sorted(METRES_PER_UNIT)} "
            "(set the motor's EGU field, e.g. caproto-put PV.EGU um)"
        )
    return scale
