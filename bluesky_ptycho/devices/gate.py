"""The quality gate: a soft Ophyd device a suspender watches (bad data or no beam: pause)."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, Signal


class QualityGate(Device):
    """``bad`` (1 while the beam or the data is bad) and ``reason``, for a suspender to watch."""

    bad = Cpt(Signal, value=0, kind="hinted")
    reason = Cpt(Signal, value="", kind="normal")
