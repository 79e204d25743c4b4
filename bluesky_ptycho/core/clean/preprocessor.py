"""The nine steps chained for one scan, touching only the raw samples under the crop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import Array, get_xp, to_numpy
from bluesky_ptycho.core.clean.settings import CleanSettings
from bluesky_ptycho.core.clean.steps import (
    center_of_mass,
    crop_window,
    divide_beamstop,
    downsample_window,
    fourier_downsample,
    overscan_fit,
    remove_ripple,
    subtract_background,
    subtract_dark,
    subtract_noise_floor,
    subtract_overscan,
    threshold_photons,
)
from bluesky_ptycho.core.dark import DarkResult


@dataclass
class CleanedBatch:
    """A cleaned batch.

    Attributes
    ----------
    frames : (N, frame_px, frame_px) float32, NumPy or CuPy
        Photon counts, DC at ``frame_px//2``, never negative.
    flags : list of str
        Per frame, why it should not be used ("" when it can).
    lost_samples, saturated : (N,) int
        Lost (dropped-packet) and saturated raw samples inside the crop.
    ripple_adu : (N,) float
        RMS of the ripple removed.
    """

    frames: Array
    flags: list[str]
    lost_samples: np.ndarray
    saturated: np.ndarray
    ripple_adu: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """True for the frames with no flag."""
        return np.array([not f for f in self.flags], bool)


class Preprocessor:
    """The nine steps, set up for one scan, applied to batches of raw frames.

    Built once from the dark statistics and the settings; each call cleans a
    batch ``(N, 1152, 1940)`` into ``(N, frame_px, frame_px)`` photon frames.
    Only the raw samples under the crop (and the overscan of their channels)
    are converted and processed, so the cost per frame is set by the crop,
    not by the 2.2 million samples of the detector.

    Parameters
    ----------
    dark : DarkResult or None
        Dark statistics of the scan. None (no darks taken): the overscan fit
        alone removes the offsets and no pixel is masked; cleaning works but
        hot pixels pass.
    settings : CleanSettings
    xp : module or str
        ``numpy``/``cupy`` or ``"cpu"``/``"gpu"``.
    chunk : int, optional
        Frames cleaned together inside a call; a larger batch is cleaned chunk by chunk
        into one result. On the CPU the temporaries of a few frames stay in the caches:
        measured on a 2-core EPYC, 4.8 ms a frame in chunks of 2–4, 5.1 in 8, 5.4 in 16,
        6.2 in 32 (docs/benchmarks.md). Default: :data:`CPU_CHUNK` with NumPy, the whole
        batch with CuPy (a GPU wants large batches).
    """

    #: frames per chunk on the CPU (measured: see the *chunk* parameter)
    CPU_CHUNK = 4

    def __init__(
        self,
        dark: DarkResult | None,
        settings: CleanSettings,
        xp: Any = np,
        chunk: int | None = None,
    ) -> None:
        self.xp = get_xp(xp) if isinstance(xp, str) else xp
        if chunk is not None and chunk < 1:
            raise ValueError(f"Preprocessor(chunk={chunk}): clean at least 1 frame at a time")
        self.chunk = chunk if chunk is not None else (self.CPU_CHUNK if self.xp is np else 0)
        self.settings = settings
        x = self.xp
        if dark is not None and tuple(dark.mean.shape) != fccd.RAW_SHAPE:
            raise ValueError(
                f"dark statistics of shape {tuple(dark.mean.shape)} cannot clean FCCD frames of "
                f"{fccd.RAW_SHAPE}: take darks with the same detector settings"
            )
        self.dark = dark
        if dark is not None:
            self._dark_raw = x.asarray(dark.mean, dtype=x.float32)
            bad = x.asarray(dark.bad, dtype=bool)
            if dark.bad_channels is not None:
                bad_ch = x.asarray(dark.bad_channels, dtype=bool)
                per_channel = x.broadcast_to(bad_ch[:, None], (fccd.N_CHANNELS, fccd.CLOCKED_ROWS))
                bad = bad.copy()
                fccd.raw_blocks(bad)[...] |= fccd.per_channel_to_raw(per_channel)
            self._bad_raw = bad
        self.center: tuple[float, float] | None = settings.center_px
        self.region: fccd.RawRegion | None = None
        if self.center is not None:
            self._set_center(self.center)

    # -- pickling (a Dask worker gets its own copy; the array module goes by name) -----
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["xp"] = "gpu" if self.xp.__name__ == "cupy" else "cpu"
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["xp"] = get_xp(state["xp"])
        self.__dict__.update(state)

    # -- set-up -----------------------------------------------------------------
    def _set_center(self, center: tuple[float, float]) -> None:
        s, x = self.settings, self.xp
        self.center = (float(center[0]), float(center[1]))
        self.crop = (*crop_window(self.center, s.crop_px), s.crop_px, s.crop_px)
        self.region = fccd.RawRegion.covering(*self.crop)
        self._calib = self._layouts(self.region)
        self._beamstop = x.asarray(s.beamstop.transmission_map(self.crop[2:], self.crop[:2]))
        self._window = downsample_window(s.frame_px, s.crop_px, s.window, s.window_width, x)

    def _layouts(self, region: fccd.RawRegion) -> tuple[Array, Array, Array]:
        """Dark mean, dark overscan and usable-pixel mask in the channel layout of *region*."""
        x = self.xp
        if self.dark is not None:
            return (
                region.take(self._dark_raw),
                region.overscan(self._dark_raw),
                ~region.take(self._bad_raw),
            )
        return (
            x.zeros(region.shape, x.float32),
            x.zeros((2, region.n_channels, fccd.CLOCKED_ROWS, 2), x.float32),
            x.ones(region.shape, bool),
        )

    # -- the steps, in channel layout ---------------------------------------------
    def _channel_steps(
        self, raw: Array, region: fccd.RawRegion, calib: tuple[Array, Array, Array]
    ) -> tuple[Array, Array, Array]:
        s, x = self.settings, self.xp
        dark, dark_ov, good = calib
        n = raw.shape[0]
        layout = region.take(raw, out=x.empty((n, *region.shape), x.float32))
        flat = layout.reshape(n, -1)
        # lost samples (dropped packets arrive as zeros) and saturation are rare: look
        # closer only at the frames that have any
        counts = x.zeros((2, n), x.int64)
        usable = good
        if bool((flat.min(axis=1) == 0).any()):
            lost = layout == 0
            usable = good & ~lost
            counts[0] = (lost & good)[..., : fccd.PIXEL_COLUMNS].reshape(n, -1).sum(axis=1)
        if bool((flat.max(axis=1) >= s.saturation_adu).any()):
            sat = (layout >= s.saturation_adu)[..., : fccd.PIXEL_COLUMNS]
            counts[1] = sat.reshape(n, -1).sum(axis=1)
        subtract_dark(layout, dark)
        ov = region.overscan(raw)
        ov_valid = ov != 0
        ov = ov.astype(x.float32) - dark_ov
        offsets = overscan_fit(ov, s.overscan_order, s.overscan_skip_rows, ov_valid)
        subtract_overscan(layout, offsets, region.rows)
        if s.background:
            subtract_background(layout, s.threshold_adu, usable)
        ripple = x.zeros(layout.shape[0], x.float32)
        if s.ripple and s.ripple_max_lines:
            est = remove_ripple(
                layout,
                s.threshold_adu,
                usable,
                s.ripple_threshold,
                s.ripple_min_cycles,
                s.ripple_max_lines,
            )
            ripple = x.sqrt((est**2).mean(axis=(1, 2, 3, 4)))
        layout *= usable
        return layout, counts, ripple

    def _image_steps(self, image: Array, transmission: Array) -> Array:
        s = self.settings
        threshold_photons(image, s.threshold_adu, s.adu_per_photon, s.threshold_dilate)
        return divide_beamstop(image, transmission)

    def find_center(self, raw: Array) -> tuple[float, float]:
        """Step 1: centre of mass of the batch's thresholded mean pattern, on the whole detector."""
        x = self.xp
        region = fccd.RawRegion.full()
        layout, _, _ = self._channel_steps(x.asarray(raw), region, self._layouts(region))
        image = region.assemble(layout, 0, 0, *fccd.IMAGE_SHAPE)
        image = self._image_steps(
            image, x.asarray(self.settings.beamstop.transmission_map(fccd.IMAGE_SHAPE))
        )
        return center_of_mass(image)

    # -- cleaning ---------------------------------------------------------------------
    def __call__(self, raw: Array) -> CleanedBatch:
        """Clean raw frames ``(N, 1152, 1940)`` (NumPy or CuPy, any integer or float dtype)."""
        x = self.xp
        raw = x.asarray(raw)
        if raw.ndim != 3 or tuple(raw.shape[1:]) != fccd.RAW_SHAPE:
            raise ValueError(
                f"raw frames have shape {tuple(raw.shape)}, expected (N, *{fccd.RAW_SHAPE})"
            )
        if self.region is None:
            self._set_center(self.find_center(raw))
        n, step = raw.shape[0], self.chunk
        if not step or n <= step:
            return self._clean(raw)
        parts = [self._clean(raw[i : i + step]) for i in range(0, n, step)]
        frames = x.empty((n, *parts[0].frames.shape[1:]), x.float32)
        for i, part in zip(range(0, n, step), parts, strict=True):
            frames[i : i + len(part.flags)] = part.frames
        return CleanedBatch(
            frames,
            [f for part in parts for f in part.flags],
            np.concatenate([part.lost_samples for part in parts]),
            np.concatenate([part.saturated for part in parts]),
            np.concatenate([part.ripple_adu for part in parts]),
        )

    def _clean(self, raw: Array) -> CleanedBatch:
        s = self.settings
        assert self.region is not None
        layout, counts, ripple = self._channel_steps(raw, self.region, self._calib)
        image = self.region.assemble(layout, *self.crop)
        image = self._image_steps(image, self._beamstop)
        frames = fourier_downsample(image, s.frame_px, win=self._window)
        frames = subtract_noise_floor(frames, s.noise_floor_photons)
        lost, sat = to_numpy(counts)
        flags = [
            "; ".join(
                p
                for p in (
                    f"{int(n_lost)} samples lost (dropped packets) inside the crop"
                    if n_lost
                    else "",
                    f"{int(n_sat)} saturated pixels inside the crop (use the beamstop or HDR)"
                    if n_sat
                    else "",
                )
                if p
            )
            for n_lost, n_sat in zip(lost, sat, strict=True)
        ]
        return CleanedBatch(frames, flags, lost.astype(int), sat.astype(int), to_numpy(ripple))
