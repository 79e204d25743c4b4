"""Frame reads from HDF5: whole or in part, straight into a buffer, only under the data roots."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest

from bluesky_ptycho.io import frames
from bluesky_ptycho.io.frames import FrameAccessError, FrameFileWriter, FrameRef, confine_reads


@pytest.fixture
def stack(tmp_path):
    """Six 48 × 20 uint16 frames written as the detector writes them (one chunk a frame)."""
    rng = np.random.default_rng(1)
    data = rng.integers(1, 60000, (6, 48, 20), dtype=np.uint16)
    w = FrameFileWriter(tmp_path / "data" / "scan.h5", (48, 20), "uint16")
    for f in data:
        w.append(f)
    w.close()
    yield w.path, data
    confine_reads(None)


@pytest.mark.parametrize("layout", ["chunked", "contiguous", "compressed"])
def test_a_frame_or_its_rows_are_read_into_the_buffer(tmp_path, stack, layout, monkeypatch):
    path, data = stack
    preads = []
    real = frames.os.preadv
    monkeypatch.setattr(frames.os, "preadv", lambda *a: preads.append(a) or real(*a))
    if layout != "chunked":  # the same frames in the other layouts HDF5 may give
        path = tmp_path / f"{layout}.h5"
        with h5py.File(path, "w") as f:
            kw = {"compression": "gzip", "chunks": (1, 48, 20)} if layout == "compressed" else {}
            f.create_dataset("/entry/data/data", data=data, **kw)
    out = np.full((48, 20), 7, np.uint16)
    FrameRef(str(path), "/entry/data/data", 4).read_into(out)
    np.testing.assert_array_equal(out, data[4])
    out[:] = 7
    FrameRef(f"file://localhost{path}", "/entry/data/data", 2).read_into(out, (12, 30))
    np.testing.assert_array_equal(out[12:30], data[2, 12:30])
    assert (out[:12] == 7).all() and (out[30:] == 7).all()  # the rest left as it was
    # plain bytes in the file are read with one pread each; compressed ones through HDF5
    assert len(preads) == (0 if layout == "compressed" else 2)
    with pytest.raises(IndexError, match="holds 6 frames"):
        FrameRef(str(path), "/entry/data/data", 6).read_into(out)
    with pytest.raises(ValueError, match="buffer"):
        FrameRef(str(path), "/entry/data/data", 0).read_into(np.empty((20, 48), np.uint16))


def test_reads_stay_under_the_data_roots_and_a_files_check_is_made_once(tmp_path, stack):
    path, data = stack
    confine_reads([tmp_path / "data"])
    out = np.empty((48, 20), np.uint16)
    FrameRef(str(path), "/entry/data/data", 1).read_into(out)
    assert frames.checked_path(str(path)) == path  # remembered, not resolved again
    outside = tmp_path / "elsewhere.h5"
    outside.write_bytes(path.read_bytes())
    refused = frames.refused_reads()
    for _ in range(2):
        with pytest.raises(FrameAccessError, match="outside the data roots"):
            FrameRef(str(outside), "/entry/data/data", 1).read_into(out)
    assert frames.refused_reads() == refused + 2  # a refusal is never remembered as a pass
    # a link inside the roots to a file outside them is refused too (links are followed)
    link = tmp_path / "data" / "link.h5"
    link.symlink_to(outside)
    with pytest.raises(FrameAccessError):
        FrameRef(str(link), "/entry/data/data", 1).read_into(out)
    confine_reads([tmp_path])  # new roots: what was checked is checked again
    FrameRef(str(outside), "/entry/data/data", 1).read_into(out)
    np.testing.assert_array_equal(out, data[1])


def test_a_dataset_keeping_its_frames_in_another_file_is_refused(tmp_path, stack):
    path, _ = stack
    virtual = tmp_path / "data" / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(6, 48, 20), dtype=np.uint16)
    layout[:] = h5py.VirtualSource(str(path), "/entry/data/data", shape=(6, 48, 20))
    with h5py.File(virtual, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout)
    with pytest.raises(FrameAccessError, match="other files"):
        FrameRef(str(virtual), "/entry/data/data", 0).read_into(np.empty((48, 20), np.uint16))


def test_a_frame_the_disk_has_no_room_for_is_refused_and_the_file_stays_whole(
    tmp_path, monkeypatch
):
    """The disk's real free space, with the reserve set to the whole disk's size: the
    append is refused before HDF5 writes anything, the error names the file and says how
    to fix it, and the frames already written are read back after a clean close."""
    w = FrameFileWriter(tmp_path / "f.h5", (32, 32), "uint16")
    for i in range(3):
        w.append(np.full((32, 32), i, np.uint16))
    st = os.statvfs(tmp_path)
    monkeypatch.setattr(frames, "SPACE_RESERVE", st.f_blocks * st.f_frsize)  # the whole disk
    with pytest.raises(OSError, match=r"f\.h5: .* MiB free on its disk.*the 3 frame\(s\) written "
                       r"are kept\. Free space in") as err:  # fmt: skip
        w.append(np.full((32, 32), 9, np.uint16))
    assert err.value.errno == errno.ENOSPC
    w.close()
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f[frames.DATASET][:, 0, 0], [0, 1, 2])
