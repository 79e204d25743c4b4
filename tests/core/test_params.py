"""Declared parameters: one declaration each, a range for every number, non-finite refused."""

from __future__ import annotations

import math
import threading

import pytest

from bluesky_ptycho.core.clean import CleanSettings
from bluesky_ptycho.core.dark import DarkSettings
from bluesky_ptycho.core.geometry import Beamstop
from bluesky_ptycho.core.params import Param, declared
from bluesky_ptycho.core.solvers import ALGORITHMS, solver_class
from bluesky_ptycho.core.stxm import ProbeSettings

SETTINGS = [CleanSettings, DarkSettings, Beamstop, ProbeSettings] + [
    solver_class(a).Options for a in ALGORITHMS
]


def _all_params():
    from bluesky_ptycho.plugins import available_stages, load_stage

    for cls in SETTINGS:
        for p in declared(cls):
            yield cls.__name__, p
    for name in available_stages():
        stage = load_stage(name)
        for p in stage.params:
            yield name, p
            for group in stage.nested_params(p.name).values():
                for q in group:
                    yield f"{name}.{p.name}", q


@pytest.mark.parametrize(
    ("owner", "param"), list(_all_params()), ids=lambda x: getattr(x, "name", x)
)
def test_every_number_a_user_can_set_has_a_range(owner, param):
    if param.kind in ("int", "float", "list"):
        assert param.min is not None and param.max is not None, f"{owner}.{param.name}"
        assert param.doc, f"{owner}.{param.name} has no documentation"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**63, True, "3"])
def test_non_finite_huge_and_wrong_typed_numbers_are_refused(value):
    p = Param("n", "int", 1, "a count", min=0, max=1000)
    q = Param("x", "float", 1.0, "a number", min=0, max=10)
    assert p.problem(value) is not None
    assert q.problem(value) is not None


def test_a_settings_object_names_the_field_the_value_and_what_is_expected():
    at_max = r"CleanSettings\.ripple_min_cycles=0\.5 is at or above the maximum 0\.5"
    with pytest.raises(ValueError, match=at_max):
        CleanSettings(ripple_min_cycles=0.5)
    with pytest.raises(ValueError, match=r"RpieOptions\.batch_size=9223372036854775808 is above"):
        solver_class("rpie").Options(batch_size=2**63)
    with pytest.raises(ValueError, match="not a finite number"):
        DarkSettings(max_std_adu=math.inf)


def test_the_docstring_lists_the_declarations():
    assert "threshold_adu : float" in CleanSettings.__doc__
    assert "a number in (0, 65535] ADU" in CleanSettings.__doc__


def test_checking_a_pipeline_file_builds_no_stage_and_starts_no_thread(monkeypatch):
    from bluesky_ptycho.pipeline.files import BACKEND, DEFAULT, load_pipeline
    from bluesky_ptycho.plugins import Stage

    def refuse(self, *a, **k):
        raise AssertionError("a stage was built while checking a file")

    monkeypatch.setattr(Stage, "__init__", refuse)
    before = threading.active_count()
    for path in (DEFAULT, BACKEND):
        spec = load_pipeline(path)
        spec.changed(params={"reconstruction": {"final_iterations": 7}})
    assert threading.active_count() == before
