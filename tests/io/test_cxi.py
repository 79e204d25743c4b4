"""CXI files: the round trip, the paths other readers use, and clear errors."""

import h5py
import numpy as np
import pytest

from bluesky_ptycho.io.cxi import CxiData, read_cxi, write_cxi


def _data():
    rng = np.random.default_rng(0)
    return CxiData(
        frames=rng.poisson(5, (6, 16, 16)).astype(np.float32),
        translations_m=rng.normal(0, 1e-6, (6, 3)),
        energy_ev=800.0,
        distance_m=0.08,
        pixel_size_m=(120e-6, 120e-6),
        mask=np.zeros((16, 16), np.uint32),
        probe=(rng.normal(size=(16, 16)) + 1j).astype(np.complex64),
        object=(rng.normal(size=(40, 50)) + 1j).astype(np.complex64),
        object_pixel_size_m=8e-9,
    )


def test_round_trip(tmp_path):
    d = _data()
    path = write_cxi(tmp_path / "scan.cxi", d)
    back = read_cxi(path)
    np.testing.assert_array_equal(back.frames, d.frames)
    np.testing.assert_array_equal(back.translations_m, d.translations_m)
    np.testing.assert_array_equal(back.probe, d.probe)
    np.testing.assert_array_equal(back.object, d.object)
    assert back.energy_ev == pytest.approx(800.0)
    assert back.distance_m == 0.08 and back.pixel_size_m == (120e-6, 120e-6)
    assert back.object_pixel_size_m == pytest.approx(8e-9)


def test_layout_ptychodus_and_ptypy_read(tmp_path):
    path = write_cxi(tmp_path / "scan.cxi", _data())
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 160
        assert f["entry_1/data_1/data"].shape == (6, 16, 16)
        assert f["entry_1/data_1/translation"].shape == (6, 3)
        assert f["entry_1/instrument_1/detector_1/data"].attrs["axes"] == "translation:y:x"
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(800 * 1.602176634e-19)
        assert f["entry_1/image_1/data"].shape == (16, 16)
        assert f["entry_1/image_2/data"].shape == (40, 50)
        np.testing.assert_allclose(f["entry_1/image_2/image_size"][()], [40 * 8e-9, 50 * 8e-9])


def test_missing_field_is_named(tmp_path):
    path = write_cxi(tmp_path / "scan.cxi", _data())
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/source_1/energy"]
    with pytest.raises(ValueError, match="entry_1/instrument_1/source_1/energy"):
        read_cxi(path)


def test_inconsistent_translations_are_refused(tmp_path):
    d = _data()
    d.translations_m = d.translations_m[:4]
    with pytest.raises(ValueError, match=r"translations_m has shape \(4, 3\)"):
        write_cxi(tmp_path / "bad.cxi", d)


_FULL_DISK = """
import resource, signal, sys
import numpy as np
from bluesky_ptycho.io.cxi import CxiData, write_cxi
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
frames = np.random.default_rng(0).poisson(5, (40, 128, 128)).astype(np.float32)  # 2.6 MB
try:
    write_cxi(sys.argv[1], CxiData(frames=frames, translations_m=np.zeros((40, 3)),
              energy_ev=800.0, distance_m=0.08, pixel_size_m=(30e-6, 30e-6)))
except OSError as e:
    print("refused:", e)
    sys.exit(3)
"""


def test_a_write_that_runs_out_of_space_leaves_the_old_file_and_no_partial_one(tmp_path):
    """The OS refuses the write past 1 MiB (RLIMIT_FSIZE, as a full disk would): the error
    names the file, the result already at that path is intact and no temporary file stays."""
    import subprocess
    import sys

    target = tmp_path / "out.cxi"
    write_cxi(target, _data())
    before = target.read_bytes()
    run = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(target)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"could not write the CXI file {target}" in run.stdout
    assert "File too large; a file already there is unchanged" in run.stdout
    assert target.read_bytes() == before
    np.testing.assert_array_equal(read_cxi(target).frames, _data().frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cxi"]


def test_the_file_appears_only_when_complete(tmp_path):
    """An error mid-write (here a frame array h5py cannot store) leaves nothing at the path."""
    d = _data()
    d.frames = np.array([[["x"] * 16] * 16] * 6, dtype=object)
    with pytest.raises(ValueError, match="could not convert string to float"):
        write_cxi(tmp_path / "scan.cxi", d)
    assert list(tmp_path.iterdir()) == []
