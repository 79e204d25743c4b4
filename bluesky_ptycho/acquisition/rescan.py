"""Adaptive rescans: which points to measure again, as a bluesky-adaptive ``Optimizer``.

:class:`RescanPlanner` listens to the pipeline's documents (subscribe it
to a :class:`~bluesky_ptycho.pipeline.runner.Pipeline`, or to a
:class:`~bluesky_ptycho.transport.snapshots.SnapshotSubscriber` of a
remote back-end) and keeps, per scan point, the quality monitor's latest
verdict. It implements bluesky-adaptive 1.0's ``Optimizer`` protocol:

- ``suggest(n)`` — up to *n* points to measure: first the points whose
  latest verdict is bad (not where the sample is empty, not more than
  ``max_attempts`` times), then, with ``add_points``, new points between
  neighbouring frames whose data error stands high;
- ``ingest(outcomes)`` — those points were measured again; their new
  verdicts arrive as documents;
- ``get_best_points()`` — the re-measured points that came out good.

:func:`bluesky_ptycho.acquisition.plans.ptycho_scan` drives it with bluesky-adaptive's own
``optimize_step`` inside the scan's run (``rescan=planner``), so the new
frames reach the same streaming reconstruction and replace the bad ones;
:func:`rescan_acquire` is the in-run acquisition plan it uses.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from typing import Any, cast

import numpy as np
from bluesky import plan_stubs as bps
from event_model import unpack_event_page
from event_model.documents import EventPage

from bluesky_ptycho.devices.stage import axis_scale_m

ID_KEY = "_id"


class RescanPlanner:
    """Suggests the points to measure again (module docstring).

    Parameters
    ----------
    x_key, y_key : str
        Names the suggestions give the stage axes (the actuators' names).
    max_attempts : int
        Times a point is measured again at most.
    empty_level : float
        A bad point whose measured neighbours all let through more than this
        fraction of the beam (the quality monitor's ``relative``, about 1
        without sample) lies where the sample is empty: it is not measured
        again. 0 (the default) measures every bad point again; a pure phase
        sample absorbs nothing and would look empty.
    add_points : int
        New points suggested at most per scan, between neighbours with
        high data error (0: none).
    error_factor : float
        "High" data error: this many times the median over the scan.
    """

    def __init__(
        self,
        x_key: str = "stage_x",
        y_key: str = "stage_y",
        max_attempts: int = 2,
        empty_level: float = 0.0,
        add_points: int = 0,
        error_factor: float = 2.0,
    ) -> None:
        if max_attempts < 1 or add_points < 0 or not 0 <= empty_level < 10 or error_factor <= 1:
            raise ValueError(
                f"RescanPlanner: max_attempts={max_attempts} (>= 1), add_points={add_points} "
                f"(>= 0), empty_level={empty_level} (0 or about 1), error_factor={error_factor} (> 1)"
            )
        self.x_key, self.y_key = x_key, y_key
        self.max_attempts = int(max_attempts)
        self.empty_level = float(empty_level)
        self.add_points = int(add_points)
        self.error_factor = float(error_factor)
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, run: str | None) -> None:
        self.run: str | None = run
        self.verdicts: dict[int, dict[str, Any]] = {}
        self.attempts: dict[int, int] = {}
        self.pending: set[int] = set()
        self.outcomes: dict[int, tuple[dict, dict]] = {}
        self.num_points = 0
        self.planned: np.ndarray = np.zeros((0, 2))
        self.frame_errors: np.ndarray = np.zeros(0)
        self.added: list[tuple[float, float]] = []

    # -- documents in -----------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            if name == "start":
                self._start(doc)
            elif name == "event":
                self._event(doc)
            elif name == "event_page":
                for ev in unpack_event_page(cast(EventPage, doc)):
                    self._event(ev)

    def _start(self, doc: dict) -> None:
        if doc.get("stage") == "quality":
            if doc.get("source_run") != self.run:
                self._reset(doc.get("source_run"))
            md = doc.get("ptycho", {})
            self.planned = np.asarray(md.get("positions_m", []), float).reshape(-1, 2)
            self.num_points = len(self.planned)

    def _event(self, ev: dict) -> None:
        d = ev["data"]
        if "bad" in d and "point" in d and "reason" in d:
            p = int(d["point"])
            self.verdicts[p] = {k: d[k] for k in ("x", "y", "bad", "reason", "relative")}
            self.pending.discard(p)
            if p in self.outcomes:
                self.outcomes[p][1]["good"] = not d["bad"]
        elif "frame_errors" in d:
            self.frame_errors = np.asarray(d["frame_errors"], float)

    # -- bluesky-adaptive's Optimizer protocol -----------------------------------------
    def suggest(self, num_points: int | None = None) -> Sequence[Mapping]:
        """Up to *num_points* (default 1) points to measure: ``{"_id": point, x_key: x, y_key: y}``."""
        n = 1 if num_points is None else int(num_points)
        with self._lock:
            out = [self._suggestion(p) for p in self.to_remeasure()[:n]]
            if len(out) < n:
                out += self._new_points(n - len(out))
            for s in out:  # waiting for the new frame's verdict from now (it may come early)
                p = s[ID_KEY]
                self.pending.add(p)
                self.attempts[p] = self.attempts.get(p, 0) + 1
                self.outcomes[p] = (
                    {self.x_key: s[self.x_key], self.y_key: s[self.y_key]},
                    {"remeasured": 0, "good": False},
                )
        return out

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Points measured again (``_id`` = point); their verdicts come as documents."""
        with self._lock:
            for pt in points:
                p = int(pt[ID_KEY])
                if p not in self.outcomes:  # a point it did not suggest (another plan's)
                    self.outcomes[p] = (
                        {self.x_key: pt.get(self.x_key), self.y_key: pt.get(self.y_key)},
                        {"good": False},
                    )
                    self.pending.add(p)
                    self.attempts[p] = self.attempts.get(p, 0) + 1
                self.outcomes[p][1]["remeasured"] = 1

    def get_best_points(self) -> Sequence[tuple[Any, Mapping, Mapping]]:
        """The re-measured points whose new frame came out good: (point, position, outcome)."""
        with self._lock:
            return [(p, pos, out) for p, (pos, out) in sorted(self.outcomes.items()) if out["good"]]

    # -- what to measure ----------------------------------------------------------------
    def to_remeasure(self) -> list[int]:
        """Bad points, in scan order, not pending, not tried too often, not in empty regions."""
        out = []
        for p, v in sorted(self.verdicts.items()):
            if not v["bad"] or p in self.pending or self.attempts.get(p, 0) >= self.max_attempts:
                continue
            if self.empty_level and self._in_empty_region(p):
                continue
            out.append(p)
        return out

    @property
    def settled(self) -> bool:
        """No re-measured point waits for its verdict."""
        with self._lock:
            return not self.pending

    def _in_empty_region(self, p: int) -> bool:
        v = self.verdicts[p]
        good = [
            (q, w)
            for q, w in self.verdicts.items()
            if q != p and not w["bad"] and np.isfinite(w["relative"])
        ]
        if len(good) < 3:
            return False
        d = [np.hypot(w["x"] - v["x"], w["y"] - v["y"]) for _, w in good]
        near = [good[i][1]["relative"] for i in np.argsort(d)[:4]]
        return bool(min(near) > self.empty_level)

    def _suggestion(self, p: int) -> dict:
        if p < len(self.planned):
            x, y = self.planned[p]
        else:
            x, y = self.verdicts[p]["x"], self.verdicts[p]["y"]
        return {ID_KEY: int(p), self.x_key: float(x), self.y_key: float(y)}

    def _new_points(self, n: int) -> list[dict]:
        """New points halfway between neighbouring frames whose data error is high."""
        budget = min(n, self.add_points - len(self.added))
        e = self.frame_errors[: len(self.planned)]
        if budget <= 0 or not np.isfinite(e).any():
            return []
        high = np.flatnonzero(np.nan_to_num(e, nan=0) > self.error_factor * np.nanmedian(e))
        out = []
        for p in high[np.argsort(-e[high])]:
            d = np.hypot(*(self.planned - self.planned[p]).T)
            d[p] = np.inf
            q = int(np.argmin(d))
            x, y = (self.planned[p] + self.planned[q]) / 2
            if any(np.hypot(x - a, y - b) < d[q] / 4 for a, b in self.added):
                continue
            index = self.num_points + len(self.added)
            self.added.append((float(x), float(y)))
            out.append({ID_KEY: index, self.x_key: float(x), self.y_key: float(y)})
            if len(out) == budget:
                break
        return out


def rescan_acquire(
    suggestions: Sequence[Mapping],
    actuators: Sequence[Any],
    sensors: Sequence[Any] | None = None,
    *,
    point: Any = None,
    **kwargs: Any,
) -> Generator[Any, Any, tuple[int, ...]]:
    """Measure *suggestions* inside the open run (bluesky-adaptive's in-run acquisition
    signature): for each, a checkpoint, move the actuators (named as in the suggestion, in m;
    each is sent in its own units, its ``egu``),
    set *point* (the stage's point signal) to the suggestion's ``_id``, and read the
    sensors with the actuators into ``primary``. Returns the ids in the order measured."""
    done = []
    for s in suggestions:
        yield from bps.checkpoint()
        args: list[Any] = []
        for a in actuators:  # suggestions are in m, motors take their own units
            args += [a, float(s[a.name]) / axis_scale_m(a)]
        if point is not None:
            args += [point, int(s[ID_KEY])]
        yield from bps.mv(*args)
        readers = [*(sensors or []), *actuators] + ([point] if point is not None else [])
        yield from bps.trigger_and_read(readers, name="primary")
        done.append(int(s[ID_KEY]))
    return tuple(done)


def rescan_outcomes(uid: Any, suggestions: Sequence[Mapping]) -> list[dict]:
    """bluesky-adaptive's evaluation function: each suggestion was measured once more
    (its verdict comes later, as a document, to :meth:`RescanPlanner.ingest`'s caller)."""
    return [{ID_KEY: s[ID_KEY], "remeasured": 1} for s in suggestions]
