"""Offline: raw FCCD frames on disk → a cleaned CXI file (Nanosurveyor's ``nsraw2cxi``, Daurer et al. 2017).

The scan is streamed through the same stages as the live pipeline
(``pipeline/raw2cxi.toml``: dark statistics, the nine cleaning steps, the STXM
contrast and the probe estimate), as :mod:`bluesky_ptycho.apps.replay` does
with a stored run: the documents a RunEngine would have emitted are made from
the detector's HDF5 files and the scan's start document (saved as JSON), and
the CXI export writes what the stages produce. Flagged frames are left out of
the CXI file and reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bluesky_ptycho.core import fccd
from bluesky_ptycho.io.frames import DATASET


@dataclass
class Raw2CxiResult:
    """What :func:`raw_to_cxi` did."""

    path: Path
    n_frames: int
    n_written: int
    n_darks: int
    flags: dict[int, str] = field(default_factory=dict)
    center: tuple[float, float] | None = None
    seconds: float = 0.0
    #: frames placed at their planned position (no stage readback was recorded for them)
    n_planned_positions: int = 0

    @property
    def frames_per_second(self) -> float:
        return self.n_frames / self.seconds if self.seconds else float("nan")


def load_metadata(path: str | Path) -> dict:
    """The ``"ptycho"`` block of a start document saved as JSON (or the block itself)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the scan metadata {path}: {err}") from err
    md = doc.get("ptycho", doc) if isinstance(doc, dict) else None
    missing = [
        k
        for k in ("energy_ev", "distance_m", "pixel_size_m", "positions_m")
        if not isinstance(md, dict) or k not in md
    ]
    if missing or not isinstance(md, dict):
        raise ValueError(
            f"{path} lacks {missing}: give a start document written by ptycho_scan "
            "(its 'ptycho' block), or a JSON object with those keys (SI units)"
        )
    return md


def scan_files(path: str | Path) -> tuple[Path, Path | None]:
    """The data and dark frame files a ``scan_<id>.json`` (written by the demo) names.

    Raises ValueError naming the file, the key and what was expected.
    """
    path = Path(path)
    try:
        scan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the scan file {path}: {err}") from None
    files = scan.get("files") if isinstance(scan, dict) else None
    if not isinstance(files, dict):
        raise ValueError(
            f"{path}: expected a JSON object with 'files': {{'primary': PATH, 'dark': PATH}} "
            "(a scan_<id>.json written by the demo), got "
            + ("no 'files'" if isinstance(scan, dict) else f"a JSON {type(scan).__name__}")
        )
    out: list[Path | None] = []
    for key, required in (("primary", True), ("dark", False)):
        value = files.get(key)
        if value is None and not required:
            out.append(None)
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{path}: files.{key} = {value!r:.80}; expected the path of the {key} frames' "
                "HDF5 file (a string)"
            )
        out.append(Path(value))
    assert out[0] is not None  # (required above)
    return out[0], out[1]


def _dataset(path: Path, what: str) -> int:
    """The number of raw FCCD frames in *path* (ValueError naming what is wrong)."""
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as err:
        raise ValueError(f"cannot open the {what} file {path}: {err}") from None
    with f:
        ds = f.get(DATASET)
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"{path} has no dataset {DATASET}: is it a frame file written by "
                             "the FCCD device?")  # fmt: skip
        if tuple(ds.shape[1:]) != fccd.RAW_SHAPE or ds.dtype.kind not in "ui":
            raise ValueError(
                f"{path}:{DATASET} holds {ds.dtype} frames of shape {tuple(ds.shape[1:])}; "
                f"expected raw FCCD frames, integers of shape {fccd.RAW_SHAPE}"
            )
        if ds.shape[0] < 1:
            raise ValueError(f"{path}:{DATASET} holds no frames")
        return int(ds.shape[0])


def raw_to_cxi(
    frames_path: str | Path,
    darks_path: str | Path | None,
    metadata: dict,
    output: str | Path,
    device: str = "cpu",
    batch_size: int = 16,
    settings: dict[str, Any] | None = None,
    progress: bool = False,
    positions_m: np.ndarray | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> Raw2CxiResult:
    """Clean the raw frames of one scan into a CXI file, through the live pipeline's stages.

    Parameters
    ----------
    frames_path, darks_path : path
        HDF5 files of the FCCD device (``/entry/data/data``); no darks: the
        overscan fit alone removes the offsets.
    metadata : dict
        The start document's ``"ptycho"`` block (:func:`load_metadata`).
    output : path
        The CXI file to write.
    settings : dict, optional
        Cleaning parameters (the ``frame_cleaning`` stage's: ``threshold_adu``, …).
    params : dict, optional
        Parameters of any of the stages of ``pipeline/raw2cxi.toml`` by stage,
        ``{"frame_cleaning": {"threshold_adu": 12}}`` (what ``--set
        frame_cleaning.threshold_adu=12`` gives); over *settings* and *batch_size*.
    positions_m : (N, 2) array, optional
        Where each frame was taken (x, y in m); default: the stage's readbacks the
        metadata recorded (``measured_positions_m``, written by the demo), the planned
        positions for frames without one (:func:`frame_positions`).
    """
    from bluesky_ptycho.pipeline.files import RAW2CXI
    from bluesky_ptycho.pipeline.runner import Pipeline

    t0 = time.perf_counter()
    output = Path(output)
    n = _dataset(Path(frames_path), "frames")
    n_darks = _dataset(Path(darks_path), "darks") if darks_path is not None else 0
    n_planned = 0
    if positions_m is None:
        try:
            positions, fallback = frame_positions(metadata, n)
        except ValueError as err:
            raise ValueError(f"{frames_path}: {err}") from None
        n_planned = int(fallback.sum())
    else:
        positions = np.asarray(positions_m, float)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) < n:
        raise ValueError(
            f"{frames_path} holds {n} frames but the positions given have shape "
            f"{positions.shape}; expected ({n}, 2) (x, y in m)"
        )
    given = {"frame_cleaning": {"batch_size": batch_size, **(settings or {})}}
    for key, values in (params or {}).items():
        given[key] = {**given.get(key, {}), **values}
    pipe = Pipeline(RAW2CXI, device=device, output_dir=output.parent, cxi_name=output.name,
                    params=given)  # fmt: skip
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="frame", desc="raw2cxi", dynamic_ncols=True)
        cleaned: set[str] = set()

        def count(name: str, doc: Mapping[str, Any]) -> None:
            if name == "descriptor" and doc.get("name") == "cleaned":
                cleaned.add(doc["uid"])
            elif name == "event" and doc["descriptor"] in cleaned:
                bar.update(1)

        pipe.subscribe(count)
    try:
        docs = scan_documents(Path(frames_path), n, Path(darks_path) if darks_path else None,
                              n_darks, metadata, positions[:n])  # fmt: skip
        uid = docs[0][1]["uid"]
        for name, doc in docs:
            pipe(name, doc)
        run = pipe.wait(uid, timeout=max(600.0, 2.0 * n))
    finally:
        if bar is not None:
            bar.close()
        pipe.close()
    export = run.export
    if export is None or export.path is None:
        flags = export.flags if export is not None else {}
        raise ValueError(
            f"no frame of {frames_path} could be cleaned: "
            f"{sorted(set(flags.values())) or run.errors}"
        )
    center = getattr(run.by_stage("frame_cleaning"), "center", None)
    flags = dict(sorted(export.flags.items()))
    return Raw2CxiResult(export.path, n, n - len(flags), n_darks, flags, center,
                         time.perf_counter() - t0, n_planned)  # fmt: skip


def frame_positions(md: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions (n, 2) in m of the file's *n* frames, a mask of those that are planned).

    The stage's readbacks recorded with each frame (``measured_positions_m``, in
    frame order, NaN where none was recorded) are used; a frame without one
    falls back to its planned position (``positions_m``).
    """
    planned = np.asarray(md.get("positions_m", []), np.float64).reshape(-1, 2)
    measured = md.get("measured_positions_m")
    pos = np.full((n, 2), np.nan)
    k = min(n, len(planned))
    pos[:k] = planned[:k]
    fallback = np.ones(n, bool)
    if measured is not None:
        m = np.asarray(measured, np.float64).reshape(-1, 2)[:n]
        ok = np.isfinite(m).all(axis=1)
        pos[: len(m)][ok] = m[ok]
        fallback[: len(m)][ok] = False
    missing = ~np.isfinite(pos).all(axis=1)
    if missing.any():
        raise ValueError(
            f"frame {int(np.flatnonzero(missing)[0])} of {n} has neither a recorded stage "
            f"readback nor a planned position (the metadata plan {len(planned)} points and "
            f"record {0 if measured is None else len(measured)} readbacks)"
        )
    return pos, fallback


def scan_documents(
    frames: Path,
    n: int,
    darks: Path | None,
    n_darks: int,
    metadata: dict,
    positions_m: np.ndarray,
) -> list[tuple[str, Mapping[str, Any]]]:
    """The documents a RunEngine would have emitted for a scan whose frames are in *frames*
    (and *darks*): a ``dark`` and a ``primary`` stream whose frames the StreamResource and
    StreamDatum documents reference, each primary event with its point and position."""
    from event_model import compose_run, compose_stream_resource

    from bluesky_ptycho.io.frames import MIMETYPE

    md = {**metadata, "image_key": "fccd_image", "x_key": "x", "y_key": "y", "point_key": "point",
          "x_units": "m", "y_units": "m",  # the positions given are in m, whatever the stage's
          "num_points": n, "num_darks": n_darks}  # fmt: skip
    md.pop("measured_positions_m", None)
    bundle = compose_run(metadata={"plan_name": "raw2cxi", "scan_id": 0, "ptycho": md})
    out: list[tuple[str, Mapping[str, Any]]] = [("start", bundle.start_doc)]
    image: dict[str, Any] = {"source": "raw2cxi", "dtype": "array", "dtype_numpy": "<u2",
             "shape": list(fccd.RAW_SHAPE), "external": "STREAM:"}  # fmt: skip
    number: dict[str, Any] = {"source": "raw2cxi", "dtype": "number", "shape": []}
    streams = [("dark", darks, n_darks, {"fccd_image": image})]
    streams.append(("primary", frames, n, {"fccd_image": image, "x": number, "y": number,
                                           "point": {**number, "dtype": "integer"}}))  # fmt: skip
    for name, path, count, keys in streams:
        if path is None or not count:
            continue
        desc = bundle.compose_descriptor(name=name, data_keys=keys)
        out.append(("descriptor", desc.descriptor_doc))
        res = compose_stream_resource(
            mimetype=MIMETYPE, uri=f"file://localhost{path.resolve()}", data_key="fccd_image",
            parameters={"dataset": DATASET, "chunk_shape": [1, *fccd.RAW_SHAPE],
                        "join_method": "stack", "swmr": True},
        )  # fmt: skip
        out.append(
            ("stream_resource", {**res.stream_resource_doc, "run_start": bundle.start_doc["uid"]})
        )
        for i in range(count):
            datum = res.compose_stream_datum(
                indices={"start": i, "stop": i + 1}, seq_nums={"start": i + 1, "stop": i + 2},
                descriptor=desc.descriptor_doc,
            )  # fmt: skip
            out.append(("stream_datum", datum))
            data: dict[str, Any] = {}
            if name == "primary":
                data = {"x": float(positions_m[i, 0]), "y": float(positions_m[i, 1]), "point": i}
            event = desc.compose_event(data=data, timestamps={k: 0.0 for k in data}, seq_num=i + 1)
            out.append(("event", event))
    out.append(("stop", bundle.compose_stop()))
    return out
