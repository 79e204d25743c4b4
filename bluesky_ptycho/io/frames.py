"""Detector frames in HDF5, as an area detector's HDF5 file plugin writes them.

:class:`FrameFileWriter` appends frames to one dataset of a growing SWMR file
and says, for each frame, which index it went to; :class:`StreamFrameReader`
follows the StreamResource/StreamDatum documents that point into such files
and reads the frames a StreamDatum names. See docs/decisions/0003.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from event_model.documents import StreamDatum, StreamResource

MIMETYPE = "application/x-hdf5"
DATASET = "/entry/data/data"


def raw_frames_key(source: str, shape: tuple[int, ...]) -> dict:
    """The descriptor data key of a detector's raw frames (uint16, *shape* each) that its
    StreamResource and StreamDatum documents point at, in files this module reads."""
    return {
        "source": source,
        "dtype": "array",
        "dtype_numpy": np.dtype("uint16").str,
        "shape": list(shape),
        "external": "STREAM:",
    }


#: where areaDetector's HDF5 plugin puts per-frame attributes (NDAttributes)
ATTRIBUTES_GROUP = "/entry/instrument/NDAttributes"
log = logging.getLogger(__name__)
#: Most bytes one read of frames may return (a StreamDatum names a few frames, not a file)
MAX_READ_BYTES = 2**30
#: Bytes a frame file's disk keeps free beyond the next frame, for HDF5 to close the file
SPACE_RESERVE = 4 * 2**20


class FrameAccessError(PermissionError):
    """A frame file outside the folders frames may be read from (nothing was opened)."""


# Folders frames may be read from (None: anywhere; a back-end that takes documents from the
# network sets them with confine_reads), and how many reads were refused.
_ROOTS: tuple[Path, ...] | None = None
_REFUSED = 0


def confine_reads(roots: list[str | os.PathLike] | None) -> None:
    """Read frames only from files under *roots* (resolved; links followed), from now on in
    this process; None lifts the limit. A document naming another file is refused, counted
    (:func:`refused_reads`) and logged; the file is never opened."""
    global _ROOTS
    _ROOTS = None if roots is None else tuple(Path(r).resolve() for r in roots)
    _CHECKED.clear()


def refused_reads() -> int:
    """Frame reads refused so far because the file lay outside the configured roots."""
    return _REFUSED


# Files already checked against the data roots (name as given → resolved path): a file's
# check is made once, not at every frame; confine_reads clears it. Bounded: a peer naming
# many files only makes it start over.
_CHECKED: dict[str, Path] = {}
_MAX_CHECKED = 1024


def checked_path(uri_or_path: str) -> Path:
    """The file a frame reference names, resolved, if frames may be read from it."""
    global _REFUSED
    if not isinstance(uri_or_path, str) or not uri_or_path:
        raise FrameAccessError(f"frame file {uri_or_path!r:.80} is not a path or file:// URI")
    known = _CHECKED.get(uri_or_path)
    if known is not None:
        return known
    path = _path_from_uri(uri_or_path)
    resolved = Path(os.path.realpath(path))
    if _ROOTS is not None and not any(resolved.is_relative_to(r) for r in _ROOTS):
        _REFUSED += 1
        log.error(
            "refused to read frames from %s: it lies outside the data roots %s (serve "
            "--data-root adds one); %d refused so far",
            resolved, [str(r) for r in _ROOTS], _REFUSED,
        )  # fmt: skip
        raise FrameAccessError(
            f"frame file {resolved} lies outside the data roots {[str(r) for r in _ROOTS]}"
        )
    if len(_CHECKED) >= _MAX_CHECKED:
        _CHECKED.clear()
    _CHECKED[uri_or_path] = resolved
    return resolved


# One lock for every h5py call made by this module: the device writes on the
# RunEngine's thread while stages read on theirs, and HDF5 allows one file
# open per process only through the same handle.
_H5_LOCK = threading.RLock()
_OPEN_WRITERS: dict[str, FrameFileWriter] = {}
# Files this process reads (SWMR, most recently used last), at most _MAX_READERS open.
_READERS: dict[str, h5py.File] = {}
_MAX_READERS = 8
# Datasets of the open files, checked once (file, dataset path) → dataset.
_DATASETS: dict[tuple[str, str], h5py.Dataset] = {}
# Datasets whose frames lie in the file as plain bytes (one unfiltered chunk a frame, or a
# contiguous layout, native byte order): (file, dataset path) → True/False; and the files'
# descriptors for reading such frames with one pread.
_PLAIN: dict[tuple[str, str], bool] = {}
_FDS: dict[str, int] = {}


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this user may still write on the disk of *folder* (or of the nearest folder
    above it that exists)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class FrameFileWriter:
    """Append frames of one shape and dtype to ``/entry/data/data`` in an HDF5 file.

    The file is opened in SWMR mode, so readers in other processes see each
    frame once it is flushed; readers in this process go through the writer's
    own handle (HDF5 does not allow opening a file twice in one process).

    Parameters
    ----------
    path : path-like
        File to create (its folder is created); an existing file is refused.
    frame_shape : tuple of int
    dtype : numpy dtype
    attributes : sequence of str
        Per-frame scalars written beside each frame, as areaDetector's HDF5
        plugin writes NDAttributes: one float64 dataset each under
        :data:`ATTRIBUTES_GROUP` (e.g. ``NDArrayUniqueId``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        frame_shape: tuple[int, ...],
        dtype: str,
        attributes: tuple[str, ...] = (),
    ) -> None:
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already: frames are never overwritten")
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self._frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.count = 0
        with _H5_LOCK:
            self._room_for(0)
            self._file = h5py.File(self.path, "w", libver="latest")
            self._ds = self._file.create_dataset(
                DATASET,
                shape=(0, *self.frame_shape),
                maxshape=(None, *self.frame_shape),
                dtype=self.dtype,
                chunks=(1, *self.frame_shape),
            )
            self._attrs = {
                name: self._file.create_dataset(
                    f"{ATTRIBUTES_GROUP}/{name}",
                    shape=(0,),
                    maxshape=(None,),
                    dtype="f8",
                    chunks=(256,),
                )
                for name in attributes
            }
            self._file.swmr_mode = True
            _OPEN_WRITERS[str(self.path)] = self

    def _room_for(self, nbytes: int) -> None:
        """Refuse (ENOSPC) unless the disk holds *nbytes* and :data:`SPACE_RESERVE` beside."""
        free = free_bytes(self.path.parent)
        if free < nbytes + SPACE_RESERVE:
            raise OSError(
                errno.ENOSPC,
                f"frame file {self.path}: {free / 2**20:.1f} MiB free on its disk, a frame "
                f"needs {nbytes / 2**20:.1f} MiB and {SPACE_RESERVE / 2**20:.0f} MiB are "
                f"kept free to close the file; the {self.count} frame(s) written are kept. "
                f"Free space in {self.path.parent} (or stage the detector to another folder)",
            )

    def append(self, frame: np.ndarray, attributes: dict[str, float] | None = None) -> int:
        """Write one frame (and its *attributes*, NaN for those not given); return its index.

        Raises
        ------
        OSError (ENOSPC)
            When the file's disk has no room for the frame and :data:`SPACE_RESERVE`
            beside it. Nothing is written: the frames already in the file stay
            readable and the file closes cleanly. (HDF5, refused space part-way
            through a write, leaves the file unclosable and handles that crash the
            process when freed; so the space is checked first. The check is for
            this writer: another writer filling the disk at the same moment, or a
            quota the disk's free space does not show, can still reach HDF5.)
        """
        if frame.shape != self.frame_shape:
            raise ValueError(
                f"frame of shape {frame.shape} given, the file holds {self.frame_shape}"
            )
        with _H5_LOCK:
            self._room_for(self._frame_bytes)
            i = self.count
            for name, ds in self._attrs.items():  # first: a reader that sees the frame sees them
                ds.resize(i + 1, axis=0)
                ds[i] = float((attributes or {}).get(name, np.nan))
                ds.flush()
            self._ds.resize(i + 1, axis=0)
            self._ds[i] = frame
            self._ds.flush()
            self.count = i + 1
        return i

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` through the writer's handle."""
        with _H5_LOCK:
            return self._ds[start:stop]

    def close(self) -> None:
        """Close the file (further reads open it read-only)."""
        with _H5_LOCK:
            _OPEN_WRITERS.pop(str(self.path), None)
            if self._file.id.valid:
                self._file.close()

    def stream_resource_parameters(self) -> dict:
        """The StreamResource ``parameters`` that describe this file."""
        return {
            "dataset": DATASET,
            "chunk_shape": [1, *self.frame_shape],
            "join_method": "stack",
            "swmr": True,
        }


def read_frames(
    uri_or_path: str, dataset: str, start: int, stop: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Frames ``start:stop`` of *dataset* in an HDF5 file (a path or a ``file://`` URI).

    Goes through the open writer when this process is writing the file. With
    *out* (shape ``(stop - start, ...)``) the frames are read into it.
    """
    if not isinstance(dataset, str) or not dataset.startswith("/"):
        raise ValueError(f"dataset {dataset!r:.80} is not an absolute HDF5 path")
    if not (type(start) is int and type(stop) is int and 0 <= start <= stop):
        raise ValueError(f"frame indices {start!r:.20}:{stop!r:.20} are not a range of frames")
    path = str(checked_path(uri_or_path))
    with _H5_LOCK:
        writer = _OPEN_WRITERS.get(path)
        if writer is not None and dataset == DATASET:
            frames = writer.read(start, stop)
            if out is None:
                return frames
            out[...] = frames
            return out
        ds = _dataset(path, dataset)
        if stop > ds.shape[0]:
            ds.refresh()
        if stop > ds.shape[0]:
            raise IndexError(
                f"{path}:{dataset} holds {ds.shape[0]} frames; frames {start}:{stop} asked for"
            )
        frame_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.float64))
        if (stop - start) * frame_bytes > MAX_READ_BYTES:
            raise ValueError(
                f"{path}:{dataset}: frames {start}:{stop} "
                f"({(stop - start) * frame_bytes / 2**20:.0f} MiB) are more than one read may "
                f"take ({MAX_READ_BYTES / 2**20:.0f} MiB)"
            )
        if out is None:
            return ds[start:stop]
        ds.read_direct(out, np.s_[start:stop])
        return out


def _dataset(path: str, dataset: str) -> h5py.Dataset:
    """The dataset *dataset* of the file at *path* (resolved and checked), opened and judged
    once while its file stays open: one that keeps its data in other files is refused.
    Call with ``_H5_LOCK`` held."""
    f = _READERS.pop(path, None)  # kept open: opening costs more than reading a frame
    if f is None or not f.id.valid:
        _forget(path)
        f = h5py.File(path, "r", swmr=True)
    _READERS[path] = f
    while len(_READERS) > _MAX_READERS:
        old_path = next(iter(_READERS))
        _forget(old_path)
        _READERS.pop(old_path).close()
    ds = _DATASETS.get((path, dataset))
    if ds is not None:
        return ds
    ds = f.get(dataset)
    if not isinstance(ds, h5py.Dataset):
        raise KeyError(f"{path} has no dataset {dataset}")
    if ds.is_virtual or ds.external or os.path.realpath(ds.file.filename) != path:
        raise FrameAccessError(
            f"{path}:{dataset} keeps its data in other files (virtual, external or linked): refused"
        )
    if ds.ndim < 1:
        raise ValueError(f"{path}:{dataset} is a scalar, not frames")
    _DATASETS[(path, dataset)] = ds
    return ds


def _forget(path: str) -> None:
    """Drop what is known of a file's datasets (it is being closed, or was)."""
    for key in [k for k in _DATASETS if k[0] == path]:
        del _DATASETS[key]
        _PLAIN.pop(key, None)
    fd = _FDS.pop(path, None)
    if fd is not None:
        os.close(fd)


def _plain(path: str, dataset: str, ds: h5py.Dataset) -> bool:
    """True when *ds* keeps each frame as plain bytes in its file: unfiltered chunks of one
    frame each, or a contiguous layout; native byte order."""
    key = (path, dataset)
    known = _PLAIN.get(key)
    if known is None:
        frame = tuple(ds.shape[1:])
        known = bool(
            ds.dtype.isnative
            and ds.id.get_create_plist().get_nfilters() == 0
            and (ds.chunks is None or tuple(ds.chunks) == (1, *frame))
        )
        _PLAIN[key] = known
    return known


def read_frame_into(
    uri_or_path: str,
    dataset: str,
    index: int,
    out: np.ndarray,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frame *index* of *dataset* read into *out* (one frame's shape and dtype), or, with
    ``rows=(lo, hi)``, only its rows ``lo:hi`` (first axis) into ``out[lo:hi]``, the rest of
    *out* left as it was: what a consumer that needs part of the frame reads.

    Where the file keeps the frame as plain bytes (an unfiltered chunk of one frame, or a
    contiguous dataset), those bytes are read straight into *out* with one ``pread`` at the
    offset HDF5's own index gives (the rows asked for are one contiguous range of them);
    otherwise HDF5 reads them. The file is checked as :func:`read_frames` checks it.
    """
    if not isinstance(dataset, str) or not dataset.startswith("/"):
        raise ValueError(f"dataset {dataset!r:.80} is not an absolute HDF5 path")
    if type(index) is not int or index < 0:
        raise ValueError(f"frame index {index!r:.20} is not a frame's index")
    path = str(checked_path(uri_or_path))
    with _H5_LOCK:
        writer = _OPEN_WRITERS.get(path)
        if writer is not None and dataset == DATASET:
            frame = writer.read(index, index + 1)[0]
            lo, hi = rows or (0, frame.shape[0])
            out[lo:hi] = frame[lo:hi]
            return out
        ds = _dataset(path, dataset)
        if index >= ds.shape[0]:
            ds.refresh()
        if index >= ds.shape[0]:
            raise IndexError(
                f"{path}:{dataset} holds {ds.shape[0]} frames; frame {index} asked for"
            )
        if out.shape != ds.shape[1:]:
            raise ValueError(f"{path}:{dataset}: a frame is {ds.shape[1:]}, the buffer {out.shape}")
        lo, hi = rows or (0, ds.shape[1])
        if not 0 <= lo <= hi <= ds.shape[1]:
            raise ValueError(f"rows {lo}:{hi} of frames of {ds.shape[1]} rows")
        row_bytes = out[0].nbytes if out.ndim > 1 else out.itemsize
        offset = None
        if _plain(path, dataset, ds) and out.flags.c_contiguous and out.dtype == ds.dtype:
            if ds.chunks is None:
                start = ds.id.get_offset()
                offset = None if start is None else start + index * out.nbytes
            else:
                info = ds.id.get_chunk_info_by_coord((index,) + (0,) * (ds.ndim - 1))
                if info.byte_offset is not None and info.size == out.nbytes:
                    offset = info.byte_offset
        if offset is None:  # not plain bytes (or not written yet): HDF5 reads (and converts)
            ds.read_direct(out, np.s_[index, lo:hi], np.s_[lo:hi])
            return out
        fd = _FDS.get(path)
        if fd is None:
            fd = _FDS[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        want = (hi - lo) * row_bytes
        got = os.preadv(fd, [out[lo:hi].data.cast("B")], offset + lo * row_bytes)
        if got != want:
            raise OSError(f"{path}: frame {index}: {got} of {want} bytes read")
        return out


def _path_from_uri(uri: str) -> Path:
    if uri.startswith("file://"):
        rest = uri[len("file://") :]
        # file://localhost/abs/path or file:///abs/path
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        return Path(rest)
    return Path(uri)


class FrameRef(NamedTuple):
    """Where one frame lies: an HDF5 file (path or ``file://`` URI), a dataset, an index.

    Small and picklable: what a worker is sent instead of the frame when it
    can read the file itself.
    """

    uri: str
    dataset: str
    index: int  # type: ignore[assignment]  # (a field, not tuple.index)

    def read(self) -> np.ndarray:
        return read_frames(self.uri, self.dataset, self.index, self.index + 1)[0]

    def read_into(self, out: np.ndarray, rows: tuple[int, int] | None = None) -> None:
        """Read the frame into *out* (one frame's shape and dtype), with no temporary copy;
        with *rows*, only those rows of it (:func:`read_frame_into`)."""
        read_frame_into(self.uri, self.dataset, self.index, out, rows)


class StreamFrameReader:
    """Reads the frames that StreamDatum documents point to.

    Feed it every ``stream_resource`` and ``stream_datum`` document of a run;
    :meth:`frames` returns the frames of one StreamDatum.
    """

    def __init__(self) -> None:
        self._resources: dict[str, StreamResource] = {}

    def stream_resource(self, doc: StreamResource) -> None:
        """Remember a StreamResource (refused when its file lies outside the data roots)."""
        if doc.get("mimetype") != MIMETYPE:
            raise ValueError(
                f"stream_resource {doc.get('uid')} has mimetype {doc.get('mimetype')!r}; "
                f"this reader handles {MIMETYPE!r}"
            )
        params = doc.get("parameters")
        if not isinstance(params, dict) or not isinstance(params.get("dataset"), str):
            raise ValueError(f"stream_resource {doc.get('uid')} names no dataset in its parameters")
        checked_path(str(doc.get("uri", "")))  # refused here, before any frame is asked for
        self._resources[doc["uid"]] = doc

    def data_key(self, datum: StreamDatum) -> str:
        """The data key a StreamDatum's resource holds."""
        return self._resources[datum["stream_resource"]]["data_key"]

    def frames(self, datum: StreamDatum) -> np.ndarray:
        """The frames ``(k, ...)`` of a StreamDatum."""
        res = self._resource(datum)
        idx = datum["indices"]
        return read_frames(res["uri"], res["parameters"]["dataset"], idx["start"], idx["stop"])

    def references(self, datum: StreamDatum) -> list[FrameRef]:
        """Where each frame of a StreamDatum lies, without reading it."""
        res = self._resource(datum)
        idx = datum["indices"]
        return [
            FrameRef(res["uri"], res["parameters"]["dataset"], i)
            for i in range(idx["start"], idx["stop"])
        ]

    def _resource(self, datum: StreamDatum) -> StreamResource:
        res = self._resources.get(datum["stream_resource"])
        if res is None:
            raise KeyError(
                f"stream_datum {datum.get('uid')} names stream_resource "
                f"{datum['stream_resource']}, which this run has not announced"
            )
        return res
