"""The sample stage (x, y in µm with a display precision, as a motor record's EGU and
PREC say) and the beam shutter."""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal, SoftPositioner
from ophyd.status import Status

from bluesky_ptycho.core.units import metres_per_unit

#: the simulated stage's units and soft limits (in those units)
STAGE_UNITS = "um"
STAGE_LIMITS = (-20.0, 20.0)
#: decimals shown of a position (a motor record's PREC): 3 in µm is 1 nm, finer than any step
STAGE_PRECISION = 3


class StageAxis(SoftPositioner):
    """A simulated motor axis that describes itself as a motor record does: its
    readback's data key carries ``units`` (the EGU) and ``precision`` (the PREC), so
    BestEffortCallback's table prints ``1.250`` µm rather than ``0.000`` m.

    Parameters
    ----------
    precision : int
        Decimals to show (``STAGE_PRECISION`` by default).
    **kwargs
        As for ophyd's ``SoftPositioner`` (``egu``, ``limits``, ``init_pos``, ...).
    """

    def __init__(self, *args: Any, precision: int = STAGE_PRECISION, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.precision = int(precision)

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc[self.name]["precision"] = self.precision
        return desc


class SampleStage(Device):
    """Sample stage with x and y axes in µm (``egu="um"``, 3 decimals) and soft limits.

    The operator reads and types positions in µm, as with a motor record
    whose EGU is ``um`` and PREC 3; plans take metres and convert with
    :func:`axis_scale_m`.
    :class:`~bluesky_ptycho.devices.epics.EpicsSampleStage` has the same
    components over two EPICS motor records.
    """

    x = Cpt(StageAxis, egu=STAGE_UNITS, limits=STAGE_LIMITS, init_pos=0.0, kind="hinted")
    y = Cpt(StageAxis, egu=STAGE_UNITS, limits=STAGE_LIMITS, init_pos=0.0, kind="hinted")
    #: the scan point being measured (set by the plan, read with every frame), so a point
    #: measured again — after a suspension, or by a rescan — replaces its earlier frame
    point = Cpt(Signal, value=-1, kind="normal")


def axis_units(axis: Any) -> str:
    """The engineering units of a positioner (``egu``); metres when it has none."""
    egu = getattr(axis, "egu", None)
    return str(egu) if egu not in (None, "") else "m"


def axis_scale_m(axis: Any) -> float:
    """Metres in one unit of *axis* (``1e-6`` for a motor in µm).

    Raises ``ValueError`` naming the axis when its EGU is not a known length unit.
    """
    try:
        return metres_per_unit(axis_units(axis))
    except ValueError as err:
        raise ValueError(f"{getattr(axis, 'name', axis)}: {err}") from None


def position_m(axis: Any) -> float:
    """Where *axis* is, in metres (its readback times its unit)."""
    return float(axis.position) * axis_scale_m(axis)


class Shutter(Device):
    """Beam shutter: ``set("open")`` / ``set("closed")``; ``state`` reads back."""

    state = Cpt(Signal, value="closed", kind="normal")

    VALUES = ("open", "closed")

    def set(self, value: str) -> Status:
        if value not in self.VALUES:
            raise ValueError(f"shutter {self.name!r}: {value!r} is not one of {self.VALUES}")
        self.state.put(value)
        st = Status(obj=self)
        st.set_finished()
        return st

    @property
    def is_open(self) -> bool:
        return self.state.get() == "open"
