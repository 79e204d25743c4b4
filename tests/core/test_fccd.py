"""FCCD raw layout: descrambling, overscan, per-channel values."""

import numpy as np
import pytest

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


@pytest.mark.parametrize(
    "rect",
    [(704, 224, 512, 512), (690, 230, 512, 512), (1000, 100, 512, 512), (100, 400, 512, 512)],
)
def test_region_takes_exactly_the_samples_under_a_rectangle(rect):
    raw = np.random.default_rng(0).integers(0, 60000, (2, *fccd.RAW_SHAPE)).astype(np.uint16)
    image = fccd.raw_to_image(raw)
    t, left, h, w = rect
    region = fccd.RawRegion.covering(t, left, h, w)
    layout = region.take(raw)
    assert layout.shape == (2, *region.shape)
    np.testing.assert_array_equal(
        region.assemble(layout, *rect), image[:, t : t + h, left : left + w]
    )
    # readout rows: an FFT-friendly count (factors 2, 3, 5 only)
    n = region.rows[1] - region.rows[0]
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    assert n == 1
    # its overscan is the whole detector's, for its channels
    ov = fccd.overscan(raw)
    got = region.overscan(raw)
    for h_ in range(2):
        np.testing.assert_array_equal(got[:, h_], ov[:, region.channels[h_]])


def test_full_region_is_the_whole_image():
    raw = np.random.default_rng(1).integers(0, 60000, fccd.RAW_SHAPE).astype(np.uint16)
    full = fccd.RawRegion.full()
    np.testing.assert_array_equal(
        full.assemble(full.take(raw), 0, 0, *fccd.IMAGE_SHAPE), fccd.raw_to_image(raw)
    )
    with pytest.raises(ValueError, match="leaves the FCCD image"):
        fccd.RawRegion.covering(1700, 0, 512, 512)
