"""A run's progress on the terminal, phase by phase, for the demo and replays.

The phases: ``starting`` (opening the catalog, building the pipeline: a line
each, before anything is counted), the scan (``scan``; ``replay`` for a
stored run: points counted), ``final iterations`` (every frame is in; the
reconstruction iterates on to its final image) and ``saving`` (the catalog
and files). While the reconstruction iterates, its iteration, data error and
frames used show with the count.

On a terminal it is a tqdm bar whose label is the phase; into a file or a
pipe, one line per phase and at most one every *interval* seconds between,
when something changed (no carriage returns in a log).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal, TextIO


class Progress:
    """Progress of one run (see the module docstring).

    Parameters
    ----------
    total : int
        Points the scan has.
    label : str
        The scan phase's name: ``"scan"`` live, ``"replay"`` for a stored run.
    count : {"raw", "cleaned"}
        What advances the count: the raw run's ``primary`` events (subscribe
        :meth:`raw` to the RunEngine), or the frames the frame-cleaning stage
        emits (a replay, whose raw documents come all at once).
    file : text file, optional
        Where to write (stderr by default).
    interval : float
        Seconds between lines while a phase lasts, when not on a terminal.
    """

    def __init__(
        self,
        total: int,
        label: str = "scan",
        count: Literal["raw", "cleaned"] = "raw",
        file: TextIO | None = None,
        interval: float = 5.0,
    ) -> None:
        self.total = int(total)
        self.label = label
        self.count = count
        self.file = file if file is not None else sys.stderr
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.interval = float(interval)
        self.phase_name = ""
        self._detail = ""
        self.done = 0
        #: the reconstruction's last iteration: (iteration, data error, frames used)
        self.iteration: tuple[int, float, int] | None = None
        self._bar: Any = None
        self._lock = threading.RLock()
        self._written = ""  # the last line written (not on a terminal)
        self._at = 0.0
        self._primary: set[str] = set()
        self._iteration: set[str] = set()
        self._cleaned: set[str] = set()
        self._counted_run: str | None = None
        self._raw_run: str | None = None

    # -- phases ------------------------------------------------------------------------
    def phase(self, name: str, detail: str = "") -> None:
        """Enter phase *name* (*detail*: what it is doing, shown with it)."""
        with self._lock:
            if not self.tty and self.phase_name not in ("", "starting", name):
                self._show(force=False, final=True)  # how the phase ended, if not yet said
            if name == "starting" or (self._bar is None and self.tty and name != self.label):
                self._line(f"{name}: {detail}" if detail else name, force=True)
                self.phase_name = name
                return
            if self.tty and self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=self.total, unit="pt", desc=name, dynamic_ncols=True, file=self.file
                )
            self.phase_name, self._detail = name, detail
            if self._bar is not None:
                self._bar.set_description(f"{name} ({detail})" if detail else name)
            else:
                self._show(force=True, detail=detail)

    def close(self) -> None:
        """The run is over: the bar is closed (the last state written, off a terminal)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif not self.tty and self.phase_name not in ("", "starting"):
                self._show(force=False, final=True)

    # -- documents ---------------------------------------------------------------------
    def raw(self, name: str, doc: Mapping[str, Any]) -> None:
        """Subscribe to the RunEngine: the scan's phase and, with ``count="raw"``, its points."""
        if name == "start":
            self._raw_run = doc.get("uid")
            darks = (doc.get("ptycho") or {}).get("num_darks", 0)
            self.phase(self.label, f"{darks} darks first" if darks else "")
        elif name == "descriptor" and doc.get("run_start") == self._raw_run:
            if doc.get("name") == "primary":
                self._primary.add(doc["uid"])
                self.phase(self.label)
        elif name == "event" and doc["descriptor"] in self._primary and self.count == "raw":
            self._advance(1)
        elif name == "stop" and doc.get("run_start") == self._raw_run and self.count == "raw":
            self.phase("final iterations")

    def derived(self, name: str, doc: Mapping[str, Any]) -> None:
        """Subscribe to the pipeline: the reconstruction's iterations and, with
        ``count="cleaned"``, the frames cleaned."""
        if name == "descriptor":
            if doc.get("name") == "iteration":
                self._iteration.add(doc["uid"])
            elif doc.get("name") == "cleaned":
                self._cleaned.add(doc["uid"])
                self._counted_run = doc.get("run_start")
        elif name == "event" and doc["descriptor"] in self._iteration:
            d = doc["data"]
            with self._lock:
                self.iteration = (int(d["iteration"]), float(d["data_error"]),
                                  int(d["n_measured"]))  # fmt: skip
                self._show(force=False)
        elif name == "event" and doc["descriptor"] in self._cleaned and self.count == "cleaned":
            self._advance(1)
        elif name == "stop" and self.count == "cleaned" and doc["run_start"] == self._counted_run:
            self.phase("final iterations")

    # -- drawing -----------------------------------------------------------------------
    def _advance(self, n: int) -> None:
        with self._lock:
            if not self.phase_name or self.phase_name == "starting":
                self.phase(self.label)
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            self._show(force=False)

    def _state(self) -> str:
        parts = [f"{self.done}/{self.total} points"]
        if self.iteration is not None:
            i, error, used = self.iteration
            parts.append(f"iteration {i}, data error {error:.3g}, {used} frames used")
        return ", ".join(parts)

    def _show(self, force: bool, detail: str | None = None, final: bool = False) -> None:
        if self._bar is not None:
            if self.iteration is not None:
                i, error, used = self.iteration
                self._bar.set_postfix(iteration=i, error=f"{error:.3g}", frames=used,
                                      refresh=False)  # fmt: skip
                now = time.monotonic()
                if now - self._at >= 0.2:  # (the count stands still in the final iterations)
                    self._bar.refresh()
                    self._at = now
            return
        if self.tty or not self.phase_name or self.phase_name == "starting":
            return
        detail = self._detail if detail is None else detail
        name = f"{self.phase_name} ({detail})" if detail else self.phase_name
        text = f"{name}: {self._state()}"
        if final and text != self._written:
            force = True
        self._line(text, force)

    def _line(self, text: str, force: bool) -> None:
        """Write *text* as a line: now when *force*, else when it changed and the last line is
        *interval* seconds old."""
        now = time.monotonic()
        if not force and (text == self._written or now - self._at < self.interval):
            return
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            self.file.write(text + "\n")
            self.file.flush()
        self._written, self._at = text, now
