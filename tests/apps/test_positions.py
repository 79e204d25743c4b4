"""Frames placed at the stage's readbacks, at the planned positions only where none was
recorded; lengths in a motor's units."""

import numpy as np
import pytest

from bluesky_ptycho.apps.raw2cxi import frame_positions
from bluesky_ptycho.core.units import metres_per_unit


def test_readbacks_win_and_missing_ones_fall_back_to_the_plan():
    md = {
        "positions_m": [[0.0, 0.0], [1e-7, 0.0], [2e-7, 0.0]],
        "measured_positions_m": [[1e-9, 2e-9], [float("nan"), float("nan")], [2.1e-7, 3e-9]],
    }
    pos, planned = frame_positions(md, 3)
    np.testing.assert_allclose(pos, [[1e-9, 2e-9], [1e-7, 0.0], [2.1e-7, 3e-9]])
    assert planned.tolist() == [False, True, False]
    # no readbacks at all (a run from before they were recorded): the plan, every frame
    pos, planned = frame_positions({"positions_m": md["positions_m"]}, 3)
    assert planned.all() and np.allclose(pos, md["positions_m"])
    # a rescanned frame past the plan needs its readback
    with pytest.raises(ValueError, match="frame 3 of 4 has neither"):
        frame_positions(md, 4)


def test_units():
    assert metres_per_unit("um") == metres_per_unit("µm") == 1e-6
    assert metres_per_unit(None) == metres_per_unit("m") == 1.0
    assert metres_per_unit("mm") == 1e-3
    with pytest.raises(ValueError, match="length unit 'furlong' is not known"):
        metres_per_unit("furlong")
