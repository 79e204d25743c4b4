"""Offline: raw FCCD frames on disk → a cleaned CXI file (the paper's ``nsraw2cxi``).

Reads the dark and the data frames from the HDF5 files the FCCD device wrote,
the scan's geometry and positions from its start document (saved as JSON),
and runs the same core steps as the live pipeline: dark statistics, the nine
cleaning steps, the STXM contrast and the probe estimate. Flagged frames are
left out of the CXI file and reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import backend, to_numpy
from bluesky_ptycho.core.clean import CleanSettings, Preprocessor
from bluesky_ptycho.core.dark import DarkSettings, RunningDarkStats
from bluesky_ptycho.core.geometry import Beamstop, Geometry
from bluesky_ptycho.core.stxm import probe_estimate
from bluesky_ptycho.io.cxi import CxiData, write_cxi
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
    #: frames written at their planned position (no stage readback was recorded for them)
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
    if missing:
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
    out = []
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
    return out[0], out[1]


def _dataset(path: Path, what: str) -> h5py.Dataset:
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot open the {what} file {path}: {err}") from err
    if DATASET not in f:
        f.close()
        raise ValueError(f"{path} has no {DATASET}: is it a frame file written by the FCCD device?")
    ds = f[DATASET]
    if tuple(ds.shape[1:]) != fccd.RAW_SHAPE:
        f.close()
        raise ValueError(
            f"{path}:{DATASET} holds frames of shape {tuple(ds.shape[1:])}, expected raw FCCD "
            f"frames {fccd.RAW_SHAPE}"
        )
    return ds


def raw_to_cxi(
    frames_path: str | Path,
    darks_path: str | Path | None,
    metadata: dict,
    output: str | Path,
    device: str = "cpu",
    batch_size: int = 16,
    settings: dict[str, Any] | None = None,
    progress: bool = False,
) -> Raw2CxiResult:
    """Clean the raw frames of one scan into a CXI file.

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
        :class:`~bluesky_ptycho.core.clean.CleanSettings` fields to override.
    """
    t0 = time.perf_counter()
    xp = backend(device)
    md = metadata
    g = Geometry.from_metadata({"crop_px": 512, "frame_px": 128, **md})
    base = CleanSettings(
        adu_per_photon=float(md.get("adu_per_photon", 36.5)),
        crop_px=g.crop_px,
        frame_px=g.frame_px,
        beamstop=Beamstop.from_dict(md.get("beamstop")),
    )
    s = replace(base, **(settings or {}))
    data = _dataset(Path(frames_path), "frames")
    n = data.shape[0]
    try:
        positions, n_planned = frame_positions(md, n)
    except ValueError as err:
        data.file.close()
        raise ValueError(f"{frames_path}: {err}") from None
    dark = None
    n_darks = 0
    if darks_path is not None:
        darks = _dataset(Path(darks_path), "darks")
        stats = RunningDarkStats(fccd.RAW_SHAPE, xp)
        for i in range(0, darks.shape[0], batch_size):
            stats.update(xp.asarray(darks[i : i + batch_size]))
        n_darks = stats.n_frames
        darks.file.close()
        dark = stats.result(DarkSettings())
    pre = Preprocessor(dark, s, xp)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="frame", desc="raw2cxi", dynamic_ncols=True)
    kept: list[np.ndarray] = []
    points: list[int] = []
    flags: dict[int, str] = {}
    total = None
    try:
        for i in range(0, n, batch_size):
            raw = data[i : i + batch_size]
            out = pre(xp.asarray(raw))
            frames = to_numpy(out.frames)
            for k, why in enumerate(out.flags):
                if why:
                    flags[i + k] = why
                else:
                    kept.append(frames[k])
                    points.append(i + k)
            good = frames[out.valid]
            if len(good):
                total = good.sum(axis=0) if total is None else total + good.sum(axis=0)
            if bar is not None:
                bar.update(len(raw))
                bar.set_postfix(flagged=len(flags), refresh=False)
    finally:
        data.file.close()
        if bar is not None:
            bar.close()
    if not kept:
        raise ValueError(f"every frame of {frames_path} was flagged: {sorted(set(flags.values()))}")
    zp = md.get("zone_plate") or {}
    illumination = to_numpy(
        probe_estimate(
            xp.asarray(total / len(kept)),
            defocus_m=float(zp.get("defocus_m", 0.0)),
            wavelength_m=g.wavelength_m,
            pixel_size_m=g.object_pixel_size_m,
        )
    )
    ps = g.frame_pixel_size_m
    pos = positions[points]
    path = write_cxi(
        output,
        CxiData(
            frames=np.stack(kept).astype(np.float32),
            translations_m=np.column_stack([pos, np.zeros(len(pos))]),
            energy_ev=g.energy_ev,
            distance_m=g.distance_m,
            pixel_size_m=(ps, ps),
            mask=np.zeros((g.frame_px, g.frame_px), np.uint32),
            illumination=illumination,
        ),
    )
    return Raw2CxiResult(
        path,
        n,
        len(kept),
        n_darks,
        flags,
        pre.center,
        time.perf_counter() - t0,
        int(np.isin(points, np.flatnonzero(n_planned)).sum()),
    )


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
