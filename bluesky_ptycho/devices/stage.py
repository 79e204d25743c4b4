"""The sample stage (x, y in m) and the beam shutter."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, Signal, SoftPositioner
from ophyd.status import Status

STAGE_LIMITS_M = (-20e-6, 20e-6)


class SampleStage(Device):
    """Sample stage with x and y axes in metres and soft limits.

    A real stage swaps the SoftPositioners for EpicsMotors with the same names.
    """

    x = Cpt(SoftPositioner, egu="m", limits=STAGE_LIMITS_M, init_pos=0.0, kind="hinted")
    y = Cpt(SoftPositioner, egu="m", limits=STAGE_LIMITS_M, init_pos=0.0, kind="hinted")
    #: the scan point being measured (set by the plan, read with every frame), so a point
    #: measured again — after a suspension, or by a rescan — replaces its earlier frame
    point = Cpt(Signal, value=-1, kind="normal")


class Shutter(Device):
    """Beam shutter: ``set("open")`` / ``set("closed")``; ``state`` reads back."""

    state = Cpt(Signal, value="closed", kind="normal")

    VALUES = ("open", "closed")

    def set(self, value: str) -> Status:  # type: ignore[override]
        if value not in self.VALUES:
            raise ValueError(f"shutter {self.name!r}: {value!r} is not one of {self.VALUES}")
        self.state.put(value)
        st = Status(obj=self)
        st.set_finished()
        return st

    @property
    def is_open(self) -> bool:
        return self.state.get() == "open"
