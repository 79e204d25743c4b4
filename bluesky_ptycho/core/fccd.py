"""Raw geometry of the LBNL fast CCD (FCCD): channels, overscan, halves.

The raw frame as the FCCD delivers it is ``(1152, 1940)`` uint16. We read it as

- axis 0: 96 ADC channels of one half × 12 clocked columns (10 pixel columns,
  then 2 overscan samples that carry only the channel's offset);
- axis 1: 2 halves × 970 clocked rows (960 pixel rows, then 10 rows past the
  last pixel row that, like the overscan columns, carry only the offset).

192 channels in all (``channel = half * 96 + local``), one per 10-column
supercolumn. The assembled image is ``(1920, 960)``: the top half (rows
0–959) is read from its top edge, the bottom half (rows 960–1919) from its
bottom edge, so its rows, supercolumns and columns within a supercolumn come
out mirrored. :data:`CHANNEL_TABLE` states where every channel lands; the
whole mapping is a view plus one copy, batched over leading axes.

The readout time of a sample, in clocked rows, is its raw row index within the
half (``0 … 969``); offsets drift with it, which is what the overscan fit
removes. See docs/decisions/0002-fccd-raw-layout.md.
"""

from __future__ import annotations

import numpy as np

from ._array import Array, get_xp

N_HALVES = 2
CHANNELS_PER_HALF = 96
N_CHANNELS = N_HALVES * CHANNELS_PER_HALF  # 192
CLOCKED_COLUMNS = 12  # per channel and row: 10 pixels + 2 overscan samples
PIXEL_COLUMNS = 10
OVERSCAN_COLUMNS = CLOCKED_COLUMNS - PIXEL_COLUMNS
CLOCKED_ROWS = 970  # per half
PIXEL_ROWS = 960

RAW_SHAPE = (CHANNELS_PER_HALF * CLOCKED_COLUMNS, N_HALVES * CLOCKED_ROWS)  # (1152, 1940)
IMAGE_SHAPE = (N_HALVES * PIXEL_ROWS, CHANNELS_PER_HALF * PIXEL_COLUMNS)  # (1920, 960)

#: For each raw channel: (half, supercolumn of the image, mirrored). Row ``c`` is channel ``c``.
CHANNEL_TABLE = np.array(
    [(c // CHANNELS_PER_HALF, c % CHANNELS_PER_HALF, 0) for c in range(CHANNELS_PER_HALF)]
    + [
        (1, CHANNELS_PER_HALF - 1 - (c % CHANNELS_PER_HALF), 1)
        for c in range(CHANNELS_PER_HALF, N_CHANNELS)
    ],
    dtype=np.int16,
)


def _check_raw(raw: Array) -> None:
    if tuple(raw.shape[-2:]) != RAW_SHAPE:
        raise ValueError(
            f"raw FCCD frame has shape {tuple(raw.shape[-2:])}, expected {RAW_SHAPE} "
            "(96 channels × 12 clocked columns, 2 halves × 970 clocked rows)"
        )


def _blocks(raw: Array) -> Array:
    """View ``(..., 1152, 1940)`` as ``(..., local, column, half, row)``."""
    lead = raw.shape[:-2]
    return raw.reshape(*lead, CHANNELS_PER_HALF, CLOCKED_COLUMNS, N_HALVES, CLOCKED_ROWS)


def raw_to_image(raw: Array) -> Array:
    """Descramble raw frames into images.

    Parameters
    ----------
    raw : (..., 1152, 1940) array
        Raw frames (any dtype), NumPy or CuPy.

    Returns
    -------
    image : (..., 1920, 960) array
        Same dtype and array module; a new array.
    """
    _check_raw(raw)
    xp = get_xp(raw)
    b = _blocks(raw)[..., :PIXEL_COLUMNS, :, :PIXEL_ROWS]  # (..., local, col, half, row)
    top = b[..., :, :, 0, :]
    bottom = b[..., ::-1, ::-1, 1, ::-1]
    halves = xp.stack([top, bottom], axis=-4)  # (..., half, local, col, row)
    nd = halves.ndim
    # → (..., half, row, local, col)
    img = xp.moveaxis(halves, nd - 1, nd - 3)
    lead = raw.shape[:-2]
    return xp.ascontiguousarray(img).reshape(*lead, *IMAGE_SHAPE)


def image_to_raw(image: Array, fill: float = 0) -> Array:
    """Scramble images into raw frames (the inverse of :func:`raw_to_image`).

    Overscan columns and rows are set to *fill*. Used by the simulator.

    Parameters
    ----------
    image : (..., 1920, 960) array

    Returns
    -------
    raw : (..., 1152, 1940) array, dtype of *image*
    """
    if tuple(image.shape[-2:]) != IMAGE_SHAPE:
        raise ValueError(f"FCCD image has shape {tuple(image.shape[-2:])}, expected {IMAGE_SHAPE}")
    xp = get_xp(image)
    lead = image.shape[:-2]
    raw = xp.full((*lead, *RAW_SHAPE), fill, dtype=image.dtype)
    b = _blocks(raw)
    img = image.reshape(*lead, N_HALVES, PIXEL_ROWS, CHANNELS_PER_HALF, PIXEL_COLUMNS)
    nd = img.ndim
    # (..., half, row, local, col) → (..., half, local, col, row)
    hl = xp.moveaxis(img, nd - 3, nd - 1)
    b[..., :PIXEL_COLUMNS, 0, :PIXEL_ROWS] = hl[..., 0, :, :, :]
    b[..., :PIXEL_COLUMNS, 1, :PIXEL_ROWS] = hl[..., 1, ::-1, ::-1, ::-1]
    return raw


def overscan(raw: Array) -> Array:
    """Overscan samples per channel.

    Parameters
    ----------
    raw : (..., 1152, 1940) array

    Returns
    -------
    (..., 192, 970, 2) array
        ``[..., channel, readout_row, sample]``, a new array of *raw*'s dtype.
    """
    _check_raw(raw)
    xp = get_xp(raw)
    b = _blocks(raw)[..., PIXEL_COLUMNS:, :, :]  # (..., local, 2, half, row)
    nd = b.ndim
    v = xp.moveaxis(b, (nd - 2, nd - 4, nd - 1, nd - 3), (nd - 4, nd - 3, nd - 2, nd - 1))
    return xp.ascontiguousarray(v).reshape(*raw.shape[:-2], N_CHANNELS, CLOCKED_ROWS, 2)


def per_channel_to_raw(values: Array) -> Array:
    """Broadcast per-channel, per-readout-row values onto the raw layout.

    Parameters
    ----------
    values : (..., 192, 970) array
        One value per channel and clocked row (an offset, say).

    Returns
    -------
    (..., 96, 1, 2, 970) array
        A view that broadcasts against ``raw.reshape(..., 96, 12, 2, 970)``,
        i.e. against :func:`raw_blocks`.
    """
    xp = get_xp(values)
    lead = values.shape[:-2]
    v = values.reshape(*lead, N_HALVES, CHANNELS_PER_HALF, CLOCKED_ROWS)
    nd = v.ndim
    v = xp.moveaxis(v, nd - 3, nd - 2)  # (..., local, half, row)
    return v[..., :, None, :, :]


def raw_blocks(raw: Array) -> Array:
    """View raw frames as ``(..., 96, 12, 2, 970)`` = (local channel, clocked column, half, row).

    Writing to the view writes to *raw*; combine with :func:`per_channel_to_raw`.
    """
    _check_raw(raw)
    return _blocks(raw)
