"""napari reader: our CXI files, ptychodus HDF5 product files and ptypy ``.ptyr`` results.

Each opens as layers: object phase and amplitude, probe mode amplitudes and
— where the file has them — the diffraction frames, every one with its pixel
size in nm as napari's ``scale`` and ``units`` (the object's pixel for the
object and the probe; for the frames, the object-plane pixel of their window,
:func:`~bluesky_ptycho.viewer.model.frame_pixel_nm`), so napari finds one unit
across layers and its scale bar reads nm. Layouts:

- CXI 1.6 (ours, :mod:`bluesky_ptycho.io.cxi`): ``entry_1/image_2`` object,
  ``entry_1/image_1`` probe, ``entry_1/data_1/data`` frames.
- ptychodus product (HDF5): datasets ``object`` ((L,) Y, X) and ``probe``
  ((M,) H, W) at the root; the object's pixel size in ``pixel_height_m``
  (an attribute of ``object`` or of the file).
- ptypy ``.ptyr``: ``content/obj/<scan>/data`` and ``content/probe/<scan>/data``,
  the pixel size in ``content/obj/<scan>/_psize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bluesky_ptycho.viewer.model import frame_pixel_nm, layer_scale

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Any:
    """The reader for *path*, or None when it is not a file this plugin knows."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    if p.suffix.lower() not in (".cxi", ".h5", ".hdf5", ".ptyr") or not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            kind = _kind(f)
    except OSError:
        return None
    return None if kind is None else read_ptycho_file


def _kind(f: h5py.File) -> str | None:
    if "entry_1" in f and ("image_2" in f["entry_1"] or "data_1" in f["entry_1"]):
        return "cxi"
    if "object" in f and "probe" in f:
        return "ptychodus"
    if "content" in f and "obj" in f["content"]:
        return "ptypy"
    return None


def read_ptycho_file(path: str | list[str]) -> list[LayerData]:
    """Layers of one ptychography file (see the module docstring).

    Raises
    ------
    ValueError
        For an HDF5 file none of the known layouts fits, naming what was looked for.
    """
    p = Path(path[0] if isinstance(path, list) else path)
    with h5py.File(p, "r") as f:
        kind = _kind(f)
    if kind == "cxi":
        return _cxi(p)
    with h5py.File(p, "r") as f:
        if kind == "ptychodus":
            obj = np.asarray(f["object"])
            probe = np.asarray(f["probe"])
            px = f["object"].attrs.get("pixel_height_m", f.attrs.get("pixel_height_m"))
        elif kind == "ptypy":
            scan = next(iter(f["content/obj"]))
            obj = np.asarray(f[f"content/obj/{scan}/data"])
            probe = np.asarray(f[f"content/probe/{scan}/data"])
            g = f[f"content/obj/{scan}"]
            px = np.asarray(g["_psize"]).ravel()[0] if "_psize" in g else None
        else:
            raise ValueError(
                f"{p}: not a ptychography file this reader knows (looked for CXI entry_1/image_2, "
                "ptychodus 'object' + 'probe', ptypy content/obj); open it with h5py"
            )
    while obj.ndim > 2:  # layers / modes of the object: the first
        obj = obj[0]
    return _layers(p.stem, obj, probe, None if px is None else float(px))


def _cxi(p: Path) -> list[LayerData]:
    from bluesky_ptycho.io.cxi import read_cxi

    data = read_cxi(p)
    frames = data.frames if data.frames is not None and len(data.frames) else None
    frame_nm = None
    if frames is not None:
        side = frames.shape[-1]
        frame_nm = frame_pixel_nm(data.energy_ev, data.distance_m, data.pixel_size_m[-1], side)
    # the probe shares the object's pixel; without an object, the frames' window's
    px = data.object_pixel_size_m or (frame_nm * 1e-9 if frame_nm else None)
    out = _layers(p.stem, data.object, data.probe, px)
    if frames is not None and frame_nm is not None:
        meta = {
            "name": f"{p.stem} frames (log)",
            "colormap": "magma",
            "visible": False,
            # detector space: pixel k is the spatial frequency k / (N · the window's pixel)
            "metadata": {"frequency_step_per_nm": 1.0 / (frames.shape[-1] * frame_nm)},
            **layer_scale(frame_nm, frames.ndim),
        }
        out.append((np.log1p(np.maximum(frames, 0)), meta, "image"))
    return out


def _layers(
    name: str, obj: np.ndarray | None, probe: np.ndarray | None, px: float | None
) -> list[LayerData]:
    # nm, not m: napari's sliders step in world units, and 1e-8 steps overflow them
    px_nm = px * 1e9 if px else None
    scale = layer_scale(px_nm)
    out: list[LayerData] = []
    if obj is not None:
        out.append(
            (
                np.angle(obj).astype(np.float32),
                {"name": f"{name} object phase", "colormap": "twilight", **scale},
                "image",
            )
        )
        out.append(
            (
                np.abs(obj).astype(np.float32),
                {"name": f"{name} object amplitude", "colormap": "gray", "visible": False, **scale},
                "image",
            )
        )
    if probe is not None:
        modes = probe if probe.ndim == 3 else probe[None]
        while modes.ndim > 3:
            modes = modes[0]
        out.append(
            (
                np.abs(modes).astype(np.float32),
                {
                    "name": f"{name} probe modes",
                    "colormap": "viridis",
                    "visible": False,
                    **layer_scale(px_nm, 3),
                },
                "image",
            )
        )
    return out
