"""The package's shape, checked: layers (import-linter), no private names across packages."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "bluesky_ptycho"


def _package_of(path: Path) -> str:
    """The dotted package a module file belongs to (its folder)."""
    return ".".join(path.parent.relative_to(ROOT).parts)


def _private_crossings() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _package_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith("bluesky_ptycho"):
                continue
            parts = node.module.split(".")
            target = node.module
            if not (ROOT / Path(*parts)).is_dir():  # a module: its package is its folder
                target = ".".join(parts[:-1])
            if target == here:
                continue
            private = [p for p in parts if p.startswith("_")]
            private += [  # dunders (__version__) are public by convention
                a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
            ]
            if private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module} {private}")
    return found


def test_no_private_name_crosses_a_package_boundary():
    assert _private_crossings() == []


def test_import_contracts_hold():
    """The layers and core's purity, as pyproject.toml's [tool.importlinter] states them."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_importing_the_package_and_core_pulls_in_no_framework():
    code = (
        "import sys, bluesky_ptycho, bluesky_ptycho.core.sim, bluesky_ptycho.core.clean, "
        "bluesky_ptycho.core.solvers, bluesky_ptycho.core.metrics, bluesky_ptycho.core.params; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'bluesky', 'ophyd', 'zmq', "
        "'h5py', 'napari', 'qtpy', 'PyQt6', 'cupy', 'event_model', 'tiled', 'distributed'}); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("bluesky_ptycho.callbacks.base", "Stage", "bluesky_ptycho.plugins.stage"),
        ("bluesky_ptycho.callbacks.base", "DerivedRun", "bluesky_ptycho.plugins.stage"),
        ("bluesky_ptycho.callbacks.pipeline", "Pipeline", "bluesky_ptycho.pipeline.runner"),
        ("bluesky_ptycho.plans", "ptycho_scan", "bluesky_ptycho.acquisition.plans"),
        ("bluesky_ptycho.rescan", "RescanPlanner", "bluesky_ptycho.acquisition.rescan"),
        ("bluesky_ptycho.feedback", "QualityGate", "bluesky_ptycho.devices.gate"),
        (
            "bluesky_ptycho.feedback",
            "install_quality_suspender",
            "bluesky_ptycho.acquisition.feedback",
        ),
        ("bluesky_ptycho.catalog", "Catalog", "bluesky_ptycho.storage.catalog"),
        ("bluesky_ptycho.catalog", "data_dir", "bluesky_ptycho.storage.paths"),
        ("bluesky_ptycho.catalog", "read_spool", "bluesky_ptycho.storage.writer"),
        ("bluesky_ptycho.logs", "find_log", "bluesky_ptycho.storage.logs"),
        ("bluesky_ptycho.demo", "run_demo", "bluesky_ptycho.apps.demo"),
        ("bluesky_ptycho.replay", "replay", "bluesky_ptycho.apps.replay"),
        ("bluesky_ptycho.raw2cxi", "raw_to_cxi", "bluesky_ptycho.apps.raw2cxi"),
        ("bluesky_ptycho.reconstruct_cxi", "reconstruct_cxi", "bluesky_ptycho.apps.reconstruct"),
        ("bluesky_ptycho.pipelines", "load_pipeline", "bluesky_ptycho.pipeline.files"),
        ("bluesky_ptycho.transport.workers", "connect", "bluesky_ptycho.pipeline.dask"),
    ],
)
def test_old_import_paths_work_for_one_release_with_a_warning(old, name, new):
    import importlib

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} is now {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_plugin_api_names():
    """What a third-party stage imports, from the plugin API's own package."""
    from bluesky_ptycho.plugins import DerivedRun, Param, Stage, available_stages, load_stage

    assert {"dark_statistics", "frame_cleaning", "reconstruction"} <= set(available_stages())
    assert issubclass(load_stage("frame_cleaning"), Stage)
    assert DerivedRun and Param
