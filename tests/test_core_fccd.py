"""FCCD raw layout: descrambling, overscan, per-channel values."""

import numpy as np

from bluesky_ptycho.core import fccd


def test_raw_image_round_trip(xp):
    raw = xp.asarray(np.arange(np.prod(fccd.RAW_SHAPE), dtype=np.float32).reshape(fccd.RAW_SHAPE))
    img = fccd.raw_to_image(raw)
    assert img.shape == fccd.IMAGE_SHAPE and type(img) is type(raw)
    back = fccd.image_to_raw(img, fill=-1)
    pixels = back >= 0
    # 192 ch × 10 px × 960 rows of the 192 × 12 × 970 samples are pixels
    assert int(pixels.sum()) == 192 * 10 * 960
    assert bool((back[pixels] == raw[pixels]).all())


def test_channel_table_places_channels():
    raw = np.zeros(fccd.RAW_SHAPE, np.float32)
    blocks = fccd.raw_blocks(raw)
    values = np.arange(fccd.N_CHANNELS, dtype=np.float32)[:, None] * np.ones(
        (1, fccd.CLOCKED_ROWS), np.float32
    )
    blocks += fccd.per_channel_to_raw(values)
    img = fccd.raw_to_image(raw)
    for c, (half, col_block, _mirrored) in enumerate(fccd.CHANNEL_TABLE):
        rows = slice(half * 960, (half + 1) * 960)
        cols = slice(col_block * 10, col_block * 10 + 10)
        assert np.all(img[rows, cols] == c), c


def test_overscan_holds_offsets_only():
    raw = np.zeros(fccd.RAW_SHAPE, np.float32)
    offsets = (
        np.random.default_rng(0)
        .normal(100, 5, (fccd.N_CHANNELS, fccd.CLOCKED_ROWS))
        .astype(np.float32)
    )
    fccd.raw_blocks(raw)[...] += fccd.per_channel_to_raw(offsets)
    raw += fccd.image_to_raw(np.full(fccd.IMAGE_SHAPE, 1000, np.float32))
    ov = fccd.overscan(raw)
    assert ov.shape == (192, 970, 2)
    np.testing.assert_array_equal(ov[..., 0], offsets)
    np.testing.assert_array_equal(ov[..., 1], offsets)
