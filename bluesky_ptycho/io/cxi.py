"""CXI 1.6 files for ptychography (the layout ptychodus 1.7 and ptypy read).

One writer and one reader. Paths (SI units):

- ``entry_1/instrument_1/detector_1/data`` (N, H, W) photon counts, DC at the
  centre, with ``distance``, ``x_pixel_size``, ``y_pixel_size``,
  ``basis_vectors``, ``corner_position`` and ``mask`` (uint32 bit field);
- ``entry_1/sample_1/geometry_1/translation`` (N, 3) in m as (x, y, z);
- ``entry_1/data_1/data`` and ``entry_1/data_1/translation``: links to those;
- ``entry_1/instrument_1/source_1/energy`` in J, and ``illumination`` (the
  probe guess, where there is one);
- ``entry_1/image_1/data`` the probe, ``entry_1/image_2/data`` the object,
  each with ``data_type``, ``data_space``, ``image_size`` (m) and
  ``is_fft_shifted``.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bluesky_ptycho.core.geometry import EV_TO_J

CXI_VERSION = 160
MASK_INVALID = 0x1


@dataclass
class CxiData:
    """What a ptychography CXI file holds.

    Attributes
    ----------
    frames : (N, H, W) float32
        Photon counts, DC at the centre.
    translations_m : (N, 3) float64
        (x, y, z) of the sample in m.
    energy_ev : float
    distance_m : float
    pixel_size_m : (float, float)
        (y, x) detector pixel size of the frames in m.
    mask : (H, W) uint32, optional
        CXI bit field, 0 = good.
    probe : (H, W) complex64, optional
    object : (Y, X) complex64, optional
    object_pixel_size_m : float, optional
    illumination : (H, W) complex64, optional
        A probe guess (``source_1/illumination``).
    """

    frames: np.ndarray
    translations_m: np.ndarray
    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None
    object: np.ndarray | None = None
    object_pixel_size_m: float | None = None
    illumination: np.ndarray | None = None


def write_cxi(path: str | os.PathLike, data: CxiData) -> Path:
    """Write *data* to a new CXI 1.6 file at *path*; return the path.

    The file is built in memory, written under a temporary name in the same
    folder, synced to disk and then renamed onto *path* (the folder synced
    too): a full disk, an I/O error or a killed process never leaves a
    truncated file at *path*, and a file already there stays as it was until
    the new one is complete. A failed write removes its temporary file (a
    process killed mid-write leaves a ``.NAME.*.tmp`` beside it). Building in
    memory holds one copy of the file while it is written, less than HDF5's own
    write to disk held (200 MiB of frames: 218 MiB above them at the peak,
    against 419 MiB); and it keeps HDF5 away from the disk, where refused space
    part-way through a write leaves handles that crash the process when they
    are freed (h5py 3.16, HDF5 2.0) — a session or a back-end with it.

    Raises
    ------
    ValueError
        When the arrays disagree (number of frames and translations, frame and
        probe shapes), naming what disagrees.
    OSError
        When the file cannot be written (full disk, no permission), naming *path*;
        nothing is left at *path* that was not there before.
    """
    path = Path(path)
    n = len(data.frames)
    t = np.asarray(data.translations_m, dtype=np.float64)
    if t.shape != (n, 3):
        raise ValueError(f"translations_m has shape {t.shape}; expected ({n}, 3) for {n} frames")
    if data.probe is not None and data.probe.shape[-2:] != data.frames.shape[-2:]:
        raise ValueError(
            f"probe shape {data.probe.shape} does not match the frames' {data.frames.shape[-2:]}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _image(data, t)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as out:
            out.write(image.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        image.close()
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        why = e.strerror or str(e)
        msg = f"could not write the CXI file {path}: {why}; a file already there is unchanged"
        raise (OSError(e.errno, msg) if e.errno else OSError(msg)) from e
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in *folder* last through a power cut (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _image(data: CxiData, t: np.ndarray) -> io.BytesIO:
    """The CXI file of *data*, built in memory."""
    ps_y, ps_x = data.pixel_size_m
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.create_dataset("cxi_version", data=CXI_VERSION)
        e = f.create_group("entry_1")
        inst = e.create_group("instrument_1")
        src = inst.create_group("source_1")
        src.create_dataset("energy", data=data.energy_ev * EV_TO_J)
        src["energy"].attrs["units"] = "J"
        if data.illumination is not None:
            src.create_dataset("illumination", data=np.asarray(data.illumination, np.complex64))
        det = inst.create_group("detector_1")
        d = det.create_dataset("data", data=np.asarray(data.frames, np.float32), chunks=True)
        d.attrs["axes"] = "translation:y:x"
        det.create_dataset("distance", data=data.distance_m)
        det.create_dataset("x_pixel_size", data=ps_x)
        det.create_dataset("y_pixel_size", data=ps_y)
        det.create_dataset("basis_vectors", data=np.array([[0, -ps_y, 0], [-ps_x, 0, 0]], float))
        h, w = data.frames.shape[-2:]
        det.create_dataset(
            "corner_position", data=np.array([w / 2 * ps_x, h / 2 * ps_y, data.distance_m])
        )
        if data.mask is not None:
            det.create_dataset("mask", data=np.asarray(data.mask, np.uint32))
        geo = e.create_group("sample_1").create_group("geometry_1")
        geo.create_dataset("translation", data=t)
        d1 = e.create_group("data_1")
        d1["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        d1["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        if data.probe is not None:
            pix = data.object_pixel_size_m or 0.0
            _image_group(e, "image_1", data.probe, "amplitude", pix)
        if data.object is not None:
            pix = data.object_pixel_size_m or 0.0
            _image_group(e, "image_2", data.object, "electron density", pix)
    return image


def _image_group(entry: h5py.Group, name: str, arr: np.ndarray, kind: str, pixel_m: float) -> None:
    g = entry.create_group(name)
    g.create_dataset("data", data=np.asarray(arr, np.complex64))
    g.create_dataset("data_type", data=kind)
    g.create_dataset("data_space", data="real")
    g.create_dataset("is_fft_shifted", data=0)
    g.create_dataset(
        "image_size", data=np.array([arr.shape[-2] * pixel_m, arr.shape[-1] * pixel_m])
    )
    g.create_dataset("image_center", data=np.array([arr.shape[-2] / 2, arr.shape[-1] / 2, 0.0]))


#: Most bytes of frames a file may ask to be read (float32): more is refused before reading
MAX_FRAME_BYTES = 64 * 2**30
#: Plausible ranges of the geometry, SI units: what a file outside them most likely got wrong
ENERGY_J = (1.0 * EV_TO_J, 1e6 * EV_TO_J)  # 1 eV to 1 MeV
DISTANCE_M = (1e-4, 100.0)
PIXEL_M = (1e-8, 1e-2)


def read_cxi(path: str | os.PathLike, max_frame_bytes: int = MAX_FRAME_BYTES) -> CxiData:
    """Read a ptychography CXI file.

    Raises
    ------
    ValueError
        When a required field is missing, of the wrong kind or out of range,
        naming the HDF5 path, the value and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CXI file {path} does not exist: give the path of a .cxi file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 file, so not a CXI file")
    with h5py.File(path, "r") as f:

        def need(p: str) -> h5py.Dataset:
            try:
                obj = f.get(p)
            except (KeyError, OSError, ValueError) as err:
                raise ValueError(
                    f"{path}: {p} cannot be opened ({err}); a link to nothing?"
                ) from None
            if obj is None:
                raise ValueError(f"{path}: missing {p} (required by CXI ptychography readers)")
            if not isinstance(obj, h5py.Dataset):
                raise ValueError(f"{path}: {p} is a group; expected a dataset")
            return obj

        def scalar(p: str, unit: str, lo: float, hi: float, hint: str = "") -> float:
            ds = need(p)
            if ds.size != 1 or ds.dtype.kind not in "iuf":
                raise ValueError(
                    f"{path}: {p} holds {ds.dtype} of shape {ds.shape}; expected one real number "
                    f"in {unit}"
                )
            value = float(np.asarray(ds[()]).reshape(-1)[0])
            if not (np.isfinite(value) and lo <= value <= hi):
                raise ValueError(
                    f"{path}: {p} = {value:g} {unit}; expected a value in [{lo:.3g}, {hi:.3g}] "
                    f"{unit}{hint}"
                )
            return value

        data = need("entry_1/data_1/data")
        if data.ndim != 3 or min(data.shape) < 1:
            raise ValueError(
                f"{path}: entry_1/data_1/data has shape {data.shape}; expected (N, H, W): "
                "one 2-D frame per position"
            )
        if data.dtype.kind not in "iuf":
            raise ValueError(
                f"{path}: entry_1/data_1/data holds {data.dtype}; expected real intensities "
                "(photon counts), not complex or other values"
            )
        nbytes = 4 * float(np.prod(data.shape, dtype=np.float64))
        if nbytes > max_frame_bytes:
            raise ValueError(
                f"{path}: entry_1/data_1/data {data.shape} would take {nbytes / 2**30:.3g} GiB "
                f"as float32; at most {max_frame_bytes / 2**30:.3g} GiB are read"
            )
        trans_ds = need("entry_1/data_1/translation")
        if trans_ds.dtype.kind not in "iuf" or trans_ds.shape != (data.shape[0], 3):
            raise ValueError(
                f"{path}: entry_1/data_1/translation holds {trans_ds.dtype} {trans_ds.shape}; "
                f"expected ({data.shape[0]}, 3): (x, y, z) in m for each of the "
                f"{data.shape[0]} frames"
            )
        trans = np.asarray(trans_ds[()], np.float64)
        if not np.isfinite(trans).all():
            raise ValueError(
                f"{path}: entry_1/data_1/translation holds {int((~np.isfinite(trans)).sum())} "
                "NaN or infinite values; expected positions in m"
            )
        det = "entry_1/instrument_1/detector_1"
        energy_j = scalar(
            "entry_1/instrument_1/source_1/energy", "J", *ENERGY_J,
            hint=f" (CXI stores joules: 800 eV is {800 * EV_TO_J:.3g} J)",
        )  # fmt: skip
        out = CxiData(
            frames=np.asarray(data[()], np.float32),
            translations_m=trans,
            energy_ev=energy_j / EV_TO_J,
            distance_m=scalar(f"{det}/distance", "m", *DISTANCE_M),
            pixel_size_m=(
                scalar(f"{det}/y_pixel_size", "m", *PIXEL_M),
                scalar(f"{det}/x_pixel_size", "m", *PIXEL_M),
            ),
        )
        if f"{det}/mask" in f:
            out.mask = need(f"{det}/mask")[()]
        if "entry_1/instrument_1/source_1/illumination" in f:
            out.illumination = need("entry_1/instrument_1/source_1/illumination")[()]
        if "entry_1/image_1/data" in f:
            out.probe = need("entry_1/image_1/data")[()]
        if "entry_1/image_2/data" in f:
            obj = need("entry_1/image_2/data")[()]
            out.object = obj
            size = f.get("entry_1/image_2/image_size")
            if size is not None and obj.shape[-1]:
                out.object_pixel_size_m = float(np.asarray(size)[-1]) / obj.shape[-1]
    return out
