"""Frame cleaning stage: raw FCCD frames → photon-count frames for the reconstruction."""

from __future__ import annotations

import resource
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from event_model.documents import (
    EventDescriptor,
    EventPage,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from bluesky_ptycho.callbacks._frames import READ_ERRORS, RawFrames, frame_problem
from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import get_xp, to_numpy
from bluesky_ptycho.core.clean import CleanedBatch, CleanSettings, Preprocessor
from bluesky_ptycho.core.dark import DarkResult
from bluesky_ptycho.core.geometry import Beamstop
from bluesky_ptycho.core.params import Param, params_of
from bluesky_ptycho.io.frames import FrameRef
from bluesky_ptycho.plugins.stage import DerivedRun, Stage, metadata


@dataclass
class _Batch:
    """A batch out on the workers: its items, each one's problem found here ("" when sent),
    what is sent (raw frames, or where they lie in the detector's files), and the call
    cleaning it (its actor's worker, the call's future)."""

    items: list
    problems: list[str]
    payload: np.ndarray | list[FrameRef] | None
    future: Any = None
    worker: str = ""
    sent_at: float = 0.0
    sent: int = 0  # times sent again after a failure on the workers


def _faults() -> int:
    """Page faults of the calling thread so far (0 where the system does not count them)."""
    try:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    except (AttributeError, ValueError, OSError):
        return 0


class CleaningActor:
    """The cleaning of one run on one Dask worker: a Dask actor, made once per worker and run.

    It keeps what a batch needs between batches — the run's
    :class:`~bluesky_ptycho.core.clean.Preprocessor` (sent once, not with every batch), a
    raw-frame buffer the frames are read straight into, and the files' checked, open
    datasets — so a batch costs its reads and its cleaning, and a call is one message
    each way between the back-end and the worker (no task through the scheduler;
    docs/decisions/0009-cleaning-actors.md). Calls run one at a time on the worker's actor
    thread, in the order they were sent.
    """

    def __init__(self, preprocessor: Preprocessor) -> None:
        self.preprocessor = preprocessor
        self._raw = np.empty((0, *fccd.RAW_SHAPE), np.uint16)

    def clean(
        self, frames: np.ndarray | list[FrameRef]
    ) -> tuple[list[str], CleanedBatch | str | None, dict[str, float]]:
        """One batch through the nine steps.

        *frames* are raw frames already checked (stacked), or references to frames in the
        detector's files, which are read here into the actor's buffer and checked. Returns
        each frame's problem ("" when fine), the cleaned batch of the fine ones (or why
        cleaning failed), and what the call cost on the worker: ``read_s`` and ``clean_s``
        (CPU seconds of the actor's thread), ``wall_s``.
        """
        t0, c0, f0 = time.perf_counter(), time.thread_time(), _faults()
        if isinstance(frames, np.ndarray):
            problems, raw = [""] * len(frames), frames
        else:
            raw = self._buffer(len(frames))
            region = self.preprocessor.region
            # the rows the cleaning reads (the crop's channels and their overscan), not the
            # whole frame: the rest of the buffer is never looked at
            lo, hi = region.raw_rows if region is not None else (0, fccd.RAW_SHAPE[0])
            problems, k = [], 0
            for ref in frames:
                try:
                    ref.read_into(raw[k], (lo, hi))
                except (OSError, KeyError, IndexError, TypeError, ValueError) as err:
                    problems.append(f"could not read the frame: {err}")
                    continue
                part = raw[k, lo:hi]
                problems.append(
                    ""
                    if part.reshape(-1)[::1009].any() or part.any()
                    else "all zeros (the frame was lost on its way)"
                )
                if not problems[-1]:
                    k += 1  # a bad frame's slot is read over by the next one
            raw = raw[:k]
        c1 = time.thread_time()
        out: CleanedBatch | str | None = None
        if len(raw):
            try:
                out = self.preprocessor(raw)
            except ValueError as err:
                out = f"cleaning failed: {err}"
        c2 = time.thread_time()
        return problems, out, {"read_s": c1 - c0, "clean_s": c2 - c1,
                               "wall_s": time.perf_counter() - t0,
                               "faults": _faults() - f0}  # fmt: skip

    def _buffer(self, n: int) -> np.ndarray:
        if len(self._raw) < n:
            self._raw = np.empty((n, *fccd.RAW_SHAPE), np.uint16)
        return self._raw


class FrameCleaner(Stage):
    """Cleans each ``primary`` frame once the dark statistics are in.

    Inputs: the raw run's documents, and the ``dark_statistics`` derived run.
    Output: a derived run with stream ``cleaned``, one event per scan point:
    ``frame`` (frame_px², photons, DC at the centre), ``point``, ``x``, ``y``
    (m), ``valid``, ``flag`` (why a frame is not valid: a wrong shape or
    dtype, NaNs, all zeros, lost samples or saturation inside the crop, a
    failed cleaning), ``photons`` and ``ripple_adu``. Invalid frames are
    passed on flagged, never dropped, so the reconstruction can give them
    zero weight and a rescan can retake them.

    With ``where = "dask"`` in the pipeline file (:meth:`distribute`) the
    batches are cleaned on Dask workers, several at once, by one
    :class:`CleaningActor` per worker made for the run (it keeps the
    preprocessor and its buffers); each batch goes to the worker with the
    fewest frames out. Results are emitted in the order the frames came, at
    most ``max_in_flight`` frames are out at once, and a batch whose worker
    died is sent again to another (a new actor is made on the worker the
    nanny starts in its place; a batch that fails anyway is sent again up to
    ``RESEND`` times before its frames are flagged), so each frame comes out
    exactly once. The first batch is cleaned here: it fixes the pattern
    centre every worker then uses.

    The geometry (gain, crop, output size, beamstop) comes from the run's
    ``"ptycho"`` metadata; keyword arguments override any
    :class:`~bluesky_ptycho.core.clean.CleanSettings` field and are checked
    when the stage is made, before a scan starts.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    batch_size : int
        Frames cleaned together (more is faster, less is more live).
    **settings
        CleanSettings fields, e.g. ``threshold_adu=15``, ``ripple=False``.
    """

    stage_name = "frame_cleaning"
    distributable = True
    RESEND = 3
    live_params = ("batch_size",)
    inputs = ("raw/primary", "dark_statistics/dark")
    outputs = ("frame_cleaning/cleaned",)
    params = (
        Param(
            "batch_size",
            "int",
            8,
            "Frames cleaned together (more: faster; fewer: more live).",
            min=1,
            max=4096,
        ),
        *params_of(
            CleanSettings, from_metadata=("adu_per_photon", "crop_px", "frame_px", "beamstop")
        ),
    )

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        given = {k: v for k, v in params.items() if k != "batch_size" and v is not None}
        CleanSettings(**given)  # how the settings go together (crop and frame sizes, …)

    def __init__(self, device: str = "cpu", batch_size: int = 8, **settings: Any) -> None:
        self.xp = get_xp(device)
        self.check_params(device, batch_size=batch_size, **settings)
        self.batch_size = batch_size
        self._overrides = {k: v for k, v in settings.items() if v is not None}
        self.settings: CleanSettings | None = None
        self.preprocessor: Preprocessor | None = None
        self._raw: RawFrames | None = None
        self._raw_uid: str | None = None
        self._dark_uid: str | None = None
        self._dark: dict | None = None
        self._out: DerivedRun | None = None
        self._frames_by_seq: dict[int, Any] = {}
        self._ready: list[tuple[int, float, float, Any]] = []
        self._raw_stopped = False
        self._dark_done = False
        self._setup_error = ""
        self.n_cleaned = 0
        self.n_flagged = 0
        self.client: Any = None
        self.max_in_flight = 0
        self.redone = 0
        self._in_flight: deque[_Batch] = deque()
        self._actors: dict[str, tuple[Any, Any]] = {}  # worker → (its actor's future, actor)
        self._actors_checked = 0.0
        #: what the workers reported spending on this run's batches (CPU s of reading and of
        #: cleaning, wall s of the calls) and how many frames they cleaned
        self.worker_time = {"read_s": 0.0, "clean_s": 0.0, "wall_s": 0.0, "faults": 0,
                            "frames": 0, "calls": 0}  # fmt: skip
        super().__init__()

    def distribute(self, client: Any, max_in_flight: int = 64) -> None:
        """Clean on the workers of the Dask *client*, with at most *max_in_flight* frames out."""
        if max_in_flight < 1:
            raise ValueError(f"frame_cleaning: max_in_flight={max_in_flight} must be >= 1")
        self.client = client
        self.max_in_flight = max_in_flight

    def held_frames(self) -> int:
        return (
            len(self._ready) + len(self._frames_by_seq) + sum(len(b.items) for b in self._in_flight)
        )

    # -- two inputs: the raw run and the dark statistics run ---------------------
    def start(self, doc: RunStart) -> None:
        if doc.get("stage") == "dark_statistics":
            self._dark_uid = doc["uid"]
            return
        self._raw_uid = doc["uid"]
        self._raw = RawFrames(doc)
        md = metadata(doc)
        base = CleanSettings(
            adu_per_photon=float(md.get("adu_per_photon", 36.5)),
            crop_px=int(md.get("crop_px", 512)),
            frame_px=int(md.get("frame_px", 128)),
            beamstop=Beamstop.from_dict(md.get("beamstop")),
        )
        self.settings = replace(base, **self._overrides)
        md["frame_pixel_size_m"] = md.get("pixel_size_m", 30e-6) * (
            self.settings.crop_px // self.settings.frame_px
        )
        self._out = DerivedRun(self, doc, {"ptycho": md, "clean_settings": self.settings.as_dict()})

    def descriptor(self, doc: EventDescriptor) -> None:
        if doc["run_start"] == self._raw_uid and self._raw is not None:
            self._raw.descriptor(doc)

    def stream_resource(self, doc: StreamResource) -> None:
        if self._raw is not None:
            self._raw.stream_resource(doc)

    def stream_datum(self, doc: StreamDatum) -> None:
        if self._raw is None:
            return
        # where the frames lie; read when cleaned (here, or by the Dask workers themselves),
        # so a late frame has the time to reach the file
        got = self._raw.from_datum(doc, "primary", read=False)
        if got is None:
            return
        for s, f in zip(got[1], got[2], strict=True):
            self._frames_by_seq[s] = f

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        if self._dark_uid is not None and self._dark is None and "mean" in doc["data"]:
            self._dark = {k: v[0] for k, v in doc["data"].items()}
            self._make_preprocessor()
            return
        if self._raw is None or self._raw.streams.get(doc["descriptor"]) != "primary":
            return
        _stream, seq, frames, data = self._raw.from_event_page(doc)
        # the stage's readbacks at the frame, in its units (µm): metres from here on
        xs = np.asarray(data.get(self._raw.x_key, [np.nan] * len(seq)), float) * self._raw.x_scale_m
        ys = np.asarray(data.get(self._raw.y_key, [np.nan] * len(seq)), float) * self._raw.y_scale_m
        points = data.get(self._raw.point_key) if self._raw.point_key else None
        for i, s in enumerate(seq):
            frame = frames[i] if frames is not None else self._frames_by_seq.pop(s, None)
            point = int(points[i]) if points is not None else s - 1
            self._ready.append((point, float(xs[i]), float(ys[i]), frame))

    def _make_preprocessor(self) -> None:
        assert self._dark is not None and self.settings is not None
        d = self._dark
        dark = None
        if int(d.get("n_frames", 0)) > 0:
            dark = DarkResult(
                np.asarray(d["mean"]),
                np.asarray(d["std"]),
                np.asarray(d["bad_pixels"]),
                int(d["n_frames"]),
                d.get("channel_mean"),
                d.get("channel_std"),
                None if d.get("bad_channels") is None else np.asarray(d["bad_channels"]),
            )
        else:
            self.log.warning(
                "no dark frames for this run: cleaning with the overscan fit alone, "
                "hot pixels are not masked"
            )
        try:
            self.preprocessor = Preprocessor(dark, self.settings, self.xp)
        except ValueError as err:  # darks of another shape, a crop off the detector
            self.log.error("cannot clean this run: %s", err)
            self._setup_error = str(err)

    def stop(self, doc: RunStop) -> None:
        if doc["run_start"] == self._raw_uid:
            self._raw_stopped = True
        elif doc["run_start"] == self._dark_uid:
            self._dark_done = True
        self._finish_if_done()

    # -- the work: batches of ready frames -----------------------------------------
    def has_work(self) -> bool:
        return (self._dark is not None and bool(self._ready)) or bool(self._in_flight)

    def work(self) -> None:
        remote = (
            self.client is not None
            and self.preprocessor is not None
            and self.preprocessor.region is not None
        )
        if remote:
            self._submit_ready()
            self._collect()
        elif self._ready:
            batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            self._clean(batch)
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if not self._raw_stopped or self._out is None:
            return
        if self._dark is None and not self._dark_done:
            return  # the dark statistics are still on their way
        if self._ready and self._dark is None:
            # the dark statistics stage sent nothing (it failed): clean without darks
            self._dark = {"n_frames": 0}
            self._make_preprocessor()
        if not self._ready and not self._in_flight:
            self._release_actors()
            self._out.stop()
            self.close()

    # -- on Dask workers ------------------------------------------------------------------
    #: seconds a call may wait before the back-end checks that its worker is still there
    CHECK_AFTER_S = 5.0

    def _update_actors(self) -> None:
        """An actor on every worker the scheduler knows (one per worker: those of workers that
        left are forgotten, workers that came get one), made with this run's preprocessor."""
        workers = set(self.client.scheduler_info(n_workers=-1)["workers"])
        for gone in set(self._actors) - workers:
            self._drop_actor(gone)
        new = {}
        for w in sorted(workers - set(self._actors)):
            try:
                prep = self.client.scatter(self.preprocessor, workers=[w], direct=True, hash=False)
                new[w] = self.client.submit(
                    CleaningActor, prep, actor=True, workers=[w], allow_other_workers=False,
                    pure=False,
                )  # fmt: skip
            except Exception as err:  # the worker went away meanwhile
                self.log.warning("no cleaning actor on %s (%s: %s)", w, type(err).__name__, err)
        for w, future in new.items():
            try:
                self._actors[w] = (future, future.result(timeout=60))
            except Exception as err:
                self.log.warning("no cleaning actor on %s (%s: %s)", w, type(err).__name__, err)
        self._actors_checked = time.monotonic()

    def _drop_actor(self, worker: str) -> None:
        got = self._actors.pop(worker, None)
        if got is not None:
            try:
                got[0].release()
            except Exception:  # the worker and its actor are gone already
                pass

    def _release_actors(self) -> None:
        for w in list(self._actors):
            self._drop_actor(w)

    def _send(self, batch: _Batch) -> bool:
        """Send *batch* to the worker with the fewest frames out; False when no worker can
        take it this moment (one just died: :meth:`_collect` tries again)."""
        if not self._actors or time.monotonic() - self._actors_checked > self.CHECK_AFTER_S:
            try:
                self._update_actors()
            except Exception as err:  # the scheduler itself is unreachable
                self.log.warning(
                    "cannot reach the Dask scheduler (%s: %s)", type(err).__name__, err
                )
        load = dict.fromkeys(self._actors, 0)
        for b in self._in_flight:
            if b.future is not None and b.worker in load:
                load[b.worker] += len(b.items)
        for w in sorted(load, key=load.__getitem__):
            try:
                batch.future = self._actors[w][1].clean(batch.payload)
            except Exception as err:  # the actor's worker was lost
                self.log.warning("worker %s lost (%s: %s)", w, type(err).__name__, err)
                self._drop_actor(w)
                continue
            batch.worker, batch.sent_at = w, time.monotonic()
            return True
        return False

    def _submit_ready(self) -> None:
        out = sum(len(b.items) for b in self._in_flight)
        while self._ready and out < self.max_in_flight:
            batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            problems = [self._problem(it) for it in batch]
            good = [it[3] for it, p in zip(batch, problems, strict=True) if not p]
            payload: Any = None
            if good and all(isinstance(f, FrameRef) for f in good):
                payload = good  # the worker reads them
            elif good:
                payload = np.stack([self._load(f) for f in good])
            self._in_flight.append(_Batch(batch, problems, payload))
            out += len(batch)

    def _lost(self, batch: _Batch) -> bool:
        """True when *batch*'s call cannot come back: its worker left the cluster."""
        if time.monotonic() - batch.sent_at < self.CHECK_AFTER_S:
            return False
        batch.sent_at = time.monotonic()
        try:
            return batch.worker not in self.client.scheduler_info(n_workers=-1)["workers"]
        except Exception:
            return False

    def _collect(self) -> None:
        """Emit finished batches from the head, in order; wait a little for the head."""
        for b in self._in_flight:
            if b.payload is not None and b.future is None and not self._send(b):
                time.sleep(0.1)
                return
        while self._in_flight:
            head = self._in_flight[0]
            problems, cleaned = head.problems, None
            if head.future is not None:
                if not head.future.done():
                    if (
                        self._ready
                        and sum(len(b.items) for b in self._in_flight) < self.max_in_flight
                    ):
                        return  # room to send more first
                    try:
                        head.future.result(timeout=0.05)
                    except Exception:  # not yet (a time-out), or failed: looked at below
                        pass
                    if not head.future.done() and not self._lost(head):
                        return
                try:
                    if not head.future.done():
                        raise OSError(f"worker {head.worker} left the cluster")
                    remote, cleaned, spent = head.future.result()
                except Exception as err:  # the worker died, or its actor is gone
                    why = f"{type(err).__name__}: {err}"
                    self._drop_actor(head.worker)
                    if head.sent < self.RESEND:
                        head.sent += 1
                        self.redone += len(head.items)
                        self.log.warning(
                            "batch of points %s lost on the workers (%s); sent again",
                            [it[0] for it in head.items],
                            why,
                        )
                        for b in self._in_flight:  # whatever else that worker held, too
                            if b.future is not None and b.worker == head.worker:
                                b.future = None
                        return
                    cleaned = f"cleaning failed on the workers {head.sent + 1} times: {why}"
                else:
                    found = iter(remote)  # the worker's verdict on the frames sent
                    problems = [p or next(found) for p in head.problems]
                    for k in ("read_s", "clean_s", "wall_s", "faults"):
                        self.worker_time[k] += spent[k]
                    self.worker_time["frames"] += len(head.items)
                    self.worker_time["calls"] += 1
            self._in_flight.popleft()
            self._emit_batch(head.items, problems, cleaned)

    def summary(self) -> str:
        return (
            f"{self.n_cleaned + self.n_flagged} frame(s): {self.n_cleaned} cleaned, "
            f"{self.n_flagged} flagged"
            + (f", {self.redone} batch(es) redone on the workers" if self.redone else "")
        )

    def status(self) -> dict[str, Any]:
        st = super().status()
        st["cleaned"], st["flagged"] = self.n_cleaned, self.n_flagged
        if self.client is not None:
            st["workers"] = {"actors": len(self._actors), "redone": self.redone, **self.worker_time}
        return st

    def on_abort(self) -> None:
        self._in_flight.clear()
        self._ready = []
        self._release_actors()

    def _emit_flagged(self, items: list, why: str) -> None:
        assert self.settings is not None and self._out is not None
        n = self.settings.frame_px
        for point, x, y, _ in items:
            self.n_flagged += 1
            self.log.warning("frame of point %d flagged: %s", point, why)
            self._out.event(
                "cleaned",
                {
                    "frame": np.zeros((n, n), np.float32),
                    "point": int(point),
                    "x": x,
                    "y": y,
                    "valid": False,
                    "flag": why,
                    "photons": 0.0,
                    "ripple_adu": 0.0,
                },
            )

    @staticmethod
    def _problem(item: tuple) -> str:
        frame = item[3]
        if frame is None:
            return "missing frame"
        if isinstance(frame, FrameRef):
            return ""  # checked where it is read
        return frame_problem(frame, fccd.RAW_SHAPE)

    @staticmethod
    def _load(frame: Any) -> np.ndarray:
        return frame.read() if isinstance(frame, FrameRef) else np.asarray(frame)

    def _clean(self, batch: list) -> None:
        """Clean *batch* here, on the stage's thread."""
        if self.preprocessor is None:
            self._emit_flagged(batch, f"not cleaned: {self._setup_error}")
            return
        items = []
        for point, x, y, frame in batch:
            if isinstance(frame, FrameRef):
                try:
                    frame = self._raw.read(frame) if self._raw is not None else frame.read()
                except READ_ERRORS as err:
                    self._emit_flagged([(point, x, y, None)], f"could not read the frame: {err}")
                    continue
            items.append((point, x, y, frame))
        problems = [self._problem(it) for it in items]
        good = [it[3] for it, p in zip(items, problems, strict=True) if not p]
        cleaned: CleanedBatch | str | None = None
        if good:
            try:
                cleaned = self.preprocessor(np.stack([np.asarray(f) for f in good]))
            except ValueError as err:
                cleaned = f"cleaning failed: {err}"
        self._emit_batch(items, problems, cleaned)

    def _emit_batch(
        self, batch: list, problems: list[str], cleaned: CleanedBatch | str | None
    ) -> None:
        """One event per item, in order: flagged for its problem, else its cleaned frame
        (*cleaned* holds the frames of the items without problems, or why they all failed)."""
        assert self._out is not None
        frames = to_numpy(cleaned.frames) if isinstance(cleaned, CleanedBatch) else None
        k = 0
        for item, problem in zip(batch, problems, strict=True):
            if problem or not isinstance(cleaned, CleanedBatch):
                self._emit_flagged([item], problem or str(cleaned))
                continue
            assert frames is not None  # made from *cleaned*, a CleanedBatch here
            point, x, y, _ = item
            f, flag = frames[k], cleaned.flags[k]
            ripple = float(cleaned.ripple_adu[k])
            k += 1
            if flag:
                self.n_flagged += 1  # (a property of the data: the run's summary counts them)
                self.log.info("frame of point %d flagged: %s", point, flag)
            else:
                self.n_cleaned += 1
            self._out.event(
                "cleaned",
                {
                    "frame": f,
                    "point": int(point),
                    "x": x,
                    "y": y,
                    "valid": not flag,
                    "flag": flag,
                    "photons": float(f.sum()),
                    "ripple_adu": ripple,
                },
            )

    @property
    def center(self) -> tuple[float, float] | None:
        """The pattern centre in use (row, col), once known."""
        return None if self.preprocessor is None else self.preprocessor.center
