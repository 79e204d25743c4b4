"""Cleaning raw FCCD frames into photon-count frames: the nine preprocessing steps.

Every step is a function on a stack of frames ``(N, ...)`` that takes and
returns NumPy or CuPy arrays alike. Steps that act on an ADC channel over its
readout time work in *channel layout* ``(N, 2, channels, rows, 12)`` (see
:class:`~bluesky_ptycho.core.fccd.RawRegion`); the others on images
``(N, H, W)``:

1. :func:`center_of_mass` — pattern centre, from the thresholded mean pattern
2. :func:`subtract_dark` — dark mean, with bad pixels, bad channels and lost
   samples (dropped packets) masked
3. :func:`overscan_fit` / :func:`subtract_overscan` — per-channel polynomial in
   readout time fitted to the overscan samples
4. :func:`subtract_background` — per-column mean of the background pixels
5. :func:`remove_ripple` — pickup lines found in the background's spectrum
   along readout time, fitted per channel and subtracted
6. :func:`threshold_photons` — threshold (mask dilated 2 × 2), ADU → photons
7. :func:`divide_beamstop` — undo the beamstop's transmission
8. :func:`crop_center` — symmetric crop around the centre
9. :func:`fourier_downsample` — crop of the Fourier transform with a soft
   (erf) or Gaussian window

plus :func:`merge_hdr` (double exposure) and :func:`subtract_noise_floor`.
:class:`Preprocessor` chains them for one scan: it is built once from the
dark statistics and the settings, and then cleans batches, touching only the
raw samples its crop needs.
"""

from __future__ import annotations

from bluesky_ptycho.core.clean.preprocessor import CleanedBatch, Preprocessor
from bluesky_ptycho.core.clean.settings import WINDOWS, CleanSettings
from bluesky_ptycho.core.clean.steps import (
    center_of_mass,
    crop_center,
    crop_window,
    divide_beamstop,
    downsample_window,
    fit_ripple,
    fourier_downsample,
    merge_hdr,
    overscan_fit,
    remove_ripple,
    ripple_lines,
    subtract_background,
    subtract_dark,
    subtract_noise_floor,
    subtract_overscan,
    threshold_photons,
)

__all__ = [
    "WINDOWS",
    "CleanSettings",
    "CleanedBatch",
    "Preprocessor",
    "center_of_mass",
    "crop_center",
    "crop_window",
    "divide_beamstop",
    "downsample_window",
    "fit_ripple",
    "fourier_downsample",
    "merge_hdr",
    "overscan_fit",
    "remove_ripple",
    "ripple_lines",
    "subtract_background",
    "subtract_dark",
    "subtract_noise_floor",
    "subtract_overscan",
    "threshold_photons",
]
