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

from dataclasses import dataclass

import numpy as np

from bluesky_ptycho.core.arrays import Array, get_xp

N_HALVES = 2
CHANNELS_PER_HALF = 96
N_CHANNELS = N_HALVES * CHANNELS_PER_HALF  # 192
CLOCKED_COLUMNS = 12  # per channel and row: 10 pixels + 2 overscan samples
PIXEL_COLUMNS = 10
OVERSCAN_COLUMNS = CLOCKED_COLUMNS - PIXEL_COLUMNS
CLOCKED_ROWS = 970  # per half
PIXEL_ROWS = 960

RAW_SHAPE = (CHANNELS_PER_HALF * CLOCKED_COLUMNS, N_HALVES * CLOCKED_ROWS)  # (1152, 1940)
RAW_FRAME_BYTES = RAW_SHAPE[0] * RAW_SHAPE[1] * 2  # uint16: 4.26 MiB a raw frame
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


# ------------------------------------------------------------------ regions in readout order
def _next_smooth(n: int) -> int:
    """Smallest integer >= n whose prime factors are only 2, 3 and 5."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


@dataclass(frozen=True)
class RawRegion:
    """The raw samples an image rectangle needs, in *channel layout*.

    Channel layout is ``(..., half, channel, readout_row, clocked_column)``:
    for each ADC channel its samples in the order they were read out (row by
    row, 12 clocked columns a row, the last 2 being overscan). Steps that act
    on a channel over readout time (offsets, background, ripple) work in it;
    :meth:`assemble` puts the pixel samples back into image order.

    A region holds, for each half, ``n_channels`` consecutive local channels
    (starting at ``first_channel[half]``) and the readout rows ``rows``;
    :meth:`covering` finds the smallest one under an image rectangle, so the
    cleaning touches only the samples its crop needs.
    """

    first_channel: tuple[int, int]
    n_channels: int
    rows: tuple[int, int]

    @classmethod
    def full(cls) -> RawRegion:
        """Every pixel sample of the detector."""
        return cls((0, 0), CHANNELS_PER_HALF, (0, PIXEL_ROWS))

    @classmethod
    def covering(cls, top: int, left: int, height: int, width: int) -> RawRegion:
        """The region under the image rectangle ``[top, top+height) × [left, left+width)``.

        Readout rows are widened, where the detector allows, to a count whose
        only prime factors are 2, 3 and 5, so that FFTs along readout time are fast.
        """
        if top < 0 or left < 0 or top + height > IMAGE_SHAPE[0] or left + width > IMAGE_SHAPE[1]:
            raise ValueError(
                f"image rectangle rows [{top}, {top + height}) × cols [{left}, {left + width}) "
                f"leaves the FCCD image {IMAGE_SHAPE}"
            )
        s0, s1 = left // PIXEL_COLUMNS, -(-(left + width) // PIXEL_COLUMNS)  # supercolumns
        # top half: image row r = readout row r; bottom half: image row 1919 − r
        spans = []
        if top < PIXEL_ROWS:
            spans.append((top, min(top + height, PIXEL_ROWS)))
        if top + height > PIXEL_ROWS:
            spans.append((2 * PIXEL_ROWS - top - height, 2 * PIXEL_ROWS - max(top, PIXEL_ROWS)))
        r0, r1 = min(r[0] for r in spans), max(r[1] for r in spans)
        n_rows = min(_next_smooth(r1 - r0), PIXEL_ROWS)
        r0 = max(0, min(r0, PIXEL_ROWS - n_rows))
        return cls((s0, CHANNELS_PER_HALF - s1), s1 - s0, (r0, r0 + n_rows))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(2, n_channels, n_rows, 12)``, the trailing shape of the channel layout."""
        return (N_HALVES, self.n_channels, self.rows[1] - self.rows[0], CLOCKED_COLUMNS)

    @property
    def raw_rows(self) -> tuple[int, int]:
        """Rows ``lo:hi`` of the raw frame (its first axis) that hold every sample the region
        needs, overscan included: both halves' channels in one range, so a frame's part
        the cleaning uses is read as one piece."""
        lo = min(self.first_channel) * CLOCKED_COLUMNS
        hi = (max(self.first_channel) + self.n_channels) * CLOCKED_COLUMNS
        return lo, hi

    @property
    def channels(self) -> np.ndarray:
        """Global channel numbers ``(2, n_channels)`` (``half * 96 + local``)."""
        return np.stack(
            [
                h * CHANNELS_PER_HALF + self.first_channel[h] + np.arange(self.n_channels)
                for h in range(N_HALVES)
            ]
        )

    def take(
        self, raw: Array, out: Array | None = None, rows: tuple[int, int] | None = None
    ) -> Array:
        """Raw frames ``(..., 1152, 1940)`` → channel layout ``(..., 2, n, rows, 12)``.

        A copy; with *out* (float32, say) the samples are converted while copied.
        *rows* overrides the region's readout rows (the overscan fit reads them all).
        """
        _check_raw(raw)
        xp = get_xp(raw)
        r0, r1 = rows or self.rows
        b = _blocks(raw)  # (..., local, column, half, row)
        nd = b.ndim
        halves = []
        for h in range(N_HALVES):
            c0 = self.first_channel[h]
            blk = b[..., c0 : c0 + self.n_channels, :, h, r0:r1]  # (..., n, 12, rows)
            halves.append(xp.swapaxes(blk, nd - 3, nd - 2))  # (..., n, rows, 12)
        lead = raw.shape[:-2]
        if out is None:
            out = xp.empty((*lead, N_HALVES, self.n_channels, r1 - r0, CLOCKED_COLUMNS), raw.dtype)
        for h in range(N_HALVES):
            out[..., h, :, :, :] = halves[h]
        return out

    def pieces(self) -> list[tuple[int, int, int, int]]:
        """Image rectangles (top, left, height, width) the two halves of the region cover."""
        r0, r1 = self.rows
        n = self.n_channels
        c_top, c_bot = self.first_channel
        return [
            (r0, c_top * PIXEL_COLUMNS, r1 - r0, n * PIXEL_COLUMNS),
            (
                2 * PIXEL_ROWS - r1,
                (CHANNELS_PER_HALF - c_bot - n) * PIXEL_COLUMNS,
                r1 - r0,
                n * PIXEL_COLUMNS,
            ),
        ]

    def assemble(self, layout: Array, top: int, left: int, height: int, width: int) -> Array:
        """Channel layout → the image rectangle ``[top, top+height) × [left, left+width)``.

        Pixels the region does not hold are 0. Same dtype and array module as *layout*.
        """
        xp = get_xp(layout)
        lead = layout.shape[:-4]
        out = xp.zeros((*lead, height, width), dtype=layout.dtype)
        nd = layout.ndim
        for h, (pt, pl, ph, pw) in enumerate(self.pieces()):
            px = layout[..., h, :, :, :PIXEL_COLUMNS]  # (..., n, rows, 10)
            px = xp.swapaxes(px, nd - 4, nd - 3)  # (..., rows, n, 10)
            if h == 1:
                px = px[..., ::-1, ::-1, ::-1]
            piece = px.reshape(*lead, ph, pw)
            y0, y1 = max(top, pt), min(top + height, pt + ph)
            x0, x1 = max(left, pl), min(left + width, pl + pw)
            if y0 < y1 and x0 < x1:
                out[..., y0 - top : y1 - top, x0 - left : x1 - left] = piece[
                    ..., y0 - pt : y1 - pt, x0 - pl : x1 - pl
                ]
        return out

    def overscan(self, raw: Array, out: Array | None = None) -> Array:
        """The overscan samples of the region's channels over all readout rows.

        Returns ``(..., 2, n_channels, 970, 2)``: half, channel, readout row, sample.
        """
        _check_raw(raw)
        xp = get_xp(raw)
        b = _blocks(raw)
        nd = b.ndim
        lead = raw.shape[:-2]
        if out is None:
            out = xp.empty(
                (*lead, N_HALVES, self.n_channels, CLOCKED_ROWS, OVERSCAN_COLUMNS), raw.dtype
            )
        for h in range(N_HALVES):
            c0 = self.first_channel[h]
            blk = b[..., c0 : c0 + self.n_channels, PIXEL_COLUMNS:, h, :]  # (..., n, 2, 970)
            out[..., h, :, :, :] = xp.swapaxes(blk, nd - 3, nd - 2)
        return out
