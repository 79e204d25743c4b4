"""Raw frames of a ptycho run, whether the documents reference them or carry them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from event_model.documents import EventDescriptor, EventPage, StreamDatum, StreamResource

from bluesky_ptycho.core.units import metres_per_unit
from bluesky_ptycho.io.frames import FrameAccessError, FrameRef, StreamFrameReader
from bluesky_ptycho.plugins.stage import metadata

#: errors reading a frame from the detector's file: missing, not written yet, unreadable
READ_ERRORS = (OSError, KeyError, IndexError)


class RawFrames:
    """Follows one raw run's documents and hands out its detector frames.

    Frames come either from StreamDatum documents (read from the detector's
    HDF5 file) or inline in events (a detector without files, or a
    synthetic stream). Each comes with its stream name and event sequence
    number.
    """

    def __init__(self, start: Mapping[str, Any], late_frame_s: float = 2.0) -> None:
        md = metadata(start)
        self.image_key: str = md.get("image_key", "fccd_image")
        self.x_key: str = md.get("x_key", "stage_x")
        self.y_key: str = md.get("y_key", "stage_y")
        #: the scan point each primary event measures (a re-measured point comes again);
        #: runs without it number points by event: seq_num - 1
        self.point_key: str | None = md.get("point_key")
        #: metres in one unit of the x and y readbacks (runs without units: metres)
        self.x_scale_m = metres_per_unit(md.get("x_units"))
        self.y_scale_m = metres_per_unit(md.get("y_units"))
        self.streams: dict[str, str] = {}  # descriptor uid → stream name
        self.reader = StreamFrameReader()
        #: seconds a frame the file does not hold yet is waited for (the detector's file
        #: writer may lag behind its documents)
        self.late_frame_s = late_frame_s
        self._unreadable: dict[str, str] = {}  # file → why: later frames of it wait no more

    def read(self, ref: FrameRef) -> np.ndarray:
        """The frame *ref* points to, waiting up to :attr:`late_frame_s` for a late one.

        Raises one of :data:`READ_ERRORS` saying why it cannot be read; a file
        that failed once is not waited for again.
        """
        if ref.uri in self._unreadable:
            raise OSError(self._unreadable[ref.uri])
        deadline = time.monotonic() + self.late_frame_s
        while True:
            try:
                return ref.read()
            except READ_ERRORS as err:
                if isinstance(err, FrameAccessError) or time.monotonic() >= deadline:
                    why = f"{type(err).__name__}: {err}"
                    if not isinstance(err, IndexError):  # a short file may still grow
                        self._unreadable[ref.uri] = why
                    raise type(err)(why) from None
            time.sleep(0.05)

    def descriptor(self, doc: EventDescriptor) -> None:
        self.streams[doc["uid"]] = doc.get("name", "primary")

    def stream_resource(self, doc: StreamResource) -> None:
        if doc.get("data_key") == self.image_key:
            self.reader.stream_resource(doc)

    def from_datum(
        self, doc: StreamDatum, stream: str | None = None, read: bool = True
    ) -> tuple[str, list[int], Any] | None:
        """(stream, seq_nums, frames) of a StreamDatum of the image key, else None;
        with *stream*, None for the other streams too (their frames are not read).
        With ``read=False`` the frames are :class:`~bluesky_ptycho.io.frames.FrameRef`
        (where they lie), not read."""
        try:
            if self.reader.data_key(doc) != self.image_key:
                return None
        except KeyError:
            return None
        name = self.streams.get(doc["descriptor"], "primary")
        if stream is not None and name != stream:
            return None
        refs = self.reader.references(doc)
        frames = [self.read(r) for r in refs] if read else refs
        s = doc["seq_nums"]
        return name, list(range(s["start"], s["stop"])), frames

    def from_event_page(
        self, doc: EventPage
    ) -> tuple[str, list[int], list[Any] | None, dict[str, list[Any]]]:
        """(stream, seq_nums, inline frames or None, data columns) of an EventPage."""
        stream = self.streams.get(doc["descriptor"], "primary")
        data = doc["data"]
        frames = data.get(self.image_key)
        return stream, list(doc["seq_num"]), frames, data


def frame_problem(frame: Any, shape: tuple[int, ...]) -> str:
    """Why *frame* cannot be used ("" when it can).

    A wrong shape, a dtype that is not integer or float, NaN/inf values, or
    nothing but zeros (a frame lost on its way).
    """
    a = np.asarray(frame)
    if a.shape != tuple(shape):
        return f"wrong shape {a.shape}, expected {tuple(shape)}"
    if a.dtype.kind not in "uif":
        return f"wrong dtype {a.dtype}, expected an integer or float type (uint16)"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return f"{int((~np.isfinite(a)).sum())} non-finite values"
    # a frame with data shows it in a sparse sample of its pixels: the whole frame is looked
    # at only when the sample is all zeros
    if not (a.reshape(-1)[::1009].any() or a.any()):
        return "all zeros (the frame was lost on its way)"
    return ""
