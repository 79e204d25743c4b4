"""From the quality monitor's documents to an Ophyd signal a suspender watches.

:class:`QualityGate` is a soft Ophyd device (``bad``: 0/1, ``reason``);
:class:`QualityFeedback` is a document callback — subscribe it to the
pipeline (in-process) or to a back-end's snapshot subscriber (remote) —
that sets ``bad`` when the quality monitor says the beam is bad, and clears
it when the beam is back. ``install_quality_suspender(RE, pipeline)`` does
the wiring the IPython profile needs::

    gate, feedback = install_quality_suspender(RE, pipeline, beam=ring_current, beam_ok=350)

While ``bad`` is 1 the RunEngine is suspended (bluesky's ``SuspendBoolHigh``);
when it falls it resumes from the last checkpoint, i.e. it measures the
interrupted point again (the plan sets the stage's ``point`` first, so the
new frame replaces the old one downstream).

Recovery needs a measure of the beam that does not come from frames (none
are taken while suspended): give *beam* — the ring current, an I0 monitor —
and the level it must be back at; without one, the gate opens again after
*hold* seconds, and if the beam is still bad the next frames close it again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from event_model import unpack_event_page
from event_model.documents import EventPage

from bluesky_ptycho.devices.gate import QualityGate

log = logging.getLogger("bluesky_ptycho.acquisition.feedback")


class QualityFeedback:
    """Drives a :class:`QualityGate` from the quality monitor's ``beam`` events.

    Parameters
    ----------
    gate : QualityGate
    beam : ophyd Signal, optional
        A beam-intensity reading (ring current, I0) that tells the beam is back.
    beam_ok : float
        *beam* at or above this is good.
    settle : float
        Seconds *beam* must stay good before the gate opens.
    hold : float
        Without *beam*: seconds after which the gate opens again to try.
    """

    def __init__(
        self,
        gate: QualityGate,
        beam: Any = None,
        beam_ok: float = 0.0,
        settle: float = 1.0,
        hold: float = 5.0,
    ) -> None:
        if beam is not None and not beam_ok > 0:
            raise ValueError(
                f"QualityFeedback: beam_ok={beam_ok!r} must be the positive level "
                f"{getattr(beam, 'name', 'the beam signal')} has with the beam on"
            )
        if settle < 0 or not hold > 0:
            raise ValueError(f"QualityFeedback: settle={settle} (>= 0 s), hold={hold} (> 0 s)")
        self.gate = gate
        self.beam, self.beam_ok = beam, float(beam_ok)
        self.settle, self.hold = float(settle), float(hold)
        self.trips = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        if beam is not None:
            beam.subscribe(self._beam_changed, run=False)

    # -- documents ------------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        events = (
            [doc]
            if name == "event"
            else unpack_event_page(cast(EventPage, doc))
            if name == "event_page"
            else []
        )
        for ev in events:
            if "ok" in ev["data"] and "consecutive_bad" in ev["data"]:
                self._beam_event(ev["data"])

    def _beam_event(self, d: dict) -> None:
        if d["ok"]:
            return  # the gate opens on the beam signal (or the hold), not on a good frame
        self.trip(str(d.get("reason") or "the beam is bad"))

    # -- the gate ---------------------------------------------------------------------
    def trip(self, reason: str) -> None:
        """Close the gate (suspend) for *reason*; it opens when the beam is back."""
        with self._lock:
            if self.gate.bad.get():
                return
            self.trips += 1
            log.warning("quality gate closed: %s", reason)
            self.gate.reason.put(reason)
            self.gate.bad.put(1)
            self._schedule_open()

    def _schedule_open(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.beam is None:
            delay = self.hold
        elif self._beam_value() >= self.beam_ok:
            delay = max(self.settle, 0.05)  # the beam reading is already back (or never left)
        else:
            self._timer = None
            return  # _beam_changed opens it
        self._timer = threading.Timer(delay, self._open)
        self._timer.daemon = True
        self._timer.start()

    def _beam_value(self) -> float:
        try:
            return float(self.beam.get())
        except Exception:
            return float("nan")

    def _beam_changed(self, value: Any = None, **kwargs: Any) -> None:
        with self._lock:
            if self.gate.bad.get():
                self._schedule_open()

    def _open(self) -> None:
        with self._lock:
            if self.beam is not None and not self._beam_value() >= self.beam_ok:
                return
            log.warning("quality gate open again (%s)", time.strftime("%H:%M:%S"))
            self.gate.reason.put("")
            self.gate.bad.put(0)

    def close(self) -> None:
        """Stop watching (cancels a pending re-open)."""
        if self._timer is not None:
            self._timer.cancel()
        if self.beam is not None:
            self.beam.clear_sub(self._beam_changed)


def install_quality_suspender(
    RE: Any,
    source: Any,
    *,
    gate: QualityGate | None = None,
    beam: Any = None,
    beam_ok: float = 0.0,
    settle: float = 1.0,
    hold: float = 5.0,
    sleep: float = 0.5,
) -> tuple[QualityGate, QualityFeedback]:
    """Make the gate and its feedback, subscribe it to *source* (a Pipeline or a
    SnapshotSubscriber), and install a ``SuspendBoolHigh`` on ``gate.bad`` in *RE*."""
    from bluesky.suspenders import SuspendBoolHigh

    gate = gate if gate is not None else QualityGate(name="quality")
    feedback = QualityFeedback(gate, beam=beam, beam_ok=beam_ok, settle=settle, hold=hold)
    source.subscribe(feedback)
    RE.install_suspender(
        SuspendBoolHigh(
            gate.bad,
            sleep=sleep,
            tripped_message="the quality monitor says the beam or the data is bad: the scan waits",
        )
    )
    return gate, feedback
