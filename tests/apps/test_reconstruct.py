"""`bluesky-ptycho reconstruct`: CXI in, probe and object out, clear errors."""

import h5py
import numpy as np
import pytest
from scans import write_scan_cxi

from bluesky_ptycho.cli import main
from bluesky_ptycho.core import metrics, sim
from bluesky_ptycho.io.cxi import read_cxi


@pytest.fixture(scope="module")
def cxi(tmp_path_factory):
    scan = sim.simulate_scan(n_side=10, frame_px=64, photons=1e6, seed=3)
    path = write_scan_cxi(tmp_path_factory.mktemp("cxi") / "scan.cxi", scan)
    return path, scan


def test_reconstruct_writes_probe_and_object(cxi, tmp_path, capsys):
    path, scan = cxi
    out = tmp_path / "out.cxi"
    rc = main(
        [
            "reconstruct",
            str(path),
            "-o",
            str(out),
            "--algorithm",
            "lsqml",
            "--iterations",
            "40",
            "--modes",
            "2",
            "--defocus",
            "15e-6",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    r = read_cxi(out)
    assert r.probe.shape == (2, 64, 64) and r.object.shape == scan.grid.shape
    np.testing.assert_allclose(r.object_pixel_size_m, scan.grid.pixel_size_m, rtol=1e-6)
    with h5py.File(out) as f:
        assert f["entry_1/image_2/data"].dtype == np.complex64
    region = np.zeros(scan.grid.shape, bool)
    region[60:-60, 60:-60] = True  # well inside the scan
    # measured 0.03 (seed 3, 40 iterations, 2 modes)
    assert metrics.object_error(r.object, scan.object, region) < 0.08
    assert "lsqml: 40 iterations" in capsys.readouterr().out


def test_reconstruct_reports_what_is_wrong(cxi, tmp_path, capsys):
    path, _scan = cxi
    bad = tmp_path / "bad.cxi"
    with h5py.File(path) as src, h5py.File(bad, "w") as dst:
        src.copy("entry_1", dst)
        del dst["entry_1/sample_1/geometry_1/translation"]
        dst["entry_1/sample_1/geometry_1/translation"] = np.zeros((3, 3))
    assert main(["reconstruct", str(bad), "-o", str(tmp_path / "o.cxi"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "entry_1/data_1/translation holds float64 (3, 3)" in err and "(100, 3)" in err
    assert main(["reconstruct", str(tmp_path / "none.cxi"), "-o", str(tmp_path / "o.cxi")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "reconstruct",
                str(path),
                "-o",
                str(tmp_path / "o.cxi"),
                "--quiet",
                "--option",
                "alpha=2",
            ]
        )
        == 2
    )
    assert "alpha=2" in capsys.readouterr().err
