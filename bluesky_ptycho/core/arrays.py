"""The one array-module helper: which of NumPy/CuPy an array belongs to, and FFTs on it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray; the core never needs more than duck typing


def get_xp(x: Any = None) -> Any:
    """Return the array module (``numpy`` or ``cupy``) of *x*.

    Parameters
    ----------
    x : array, str or None
        An array (its module is returned), or one of ``"cpu"``/``"gpu"``
        naming a backend. ``None`` means NumPy.
    """
    if isinstance(x, str):
        return backend(x)
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


def backend(device: str) -> Any:
    """Return the array module for *device* (``"cpu"`` or ``"gpu"``).

    Raises
    ------
    RuntimeError
        For ``"gpu"`` when CuPy is not installed or sees no CUDA device; the
        message says how to fix it.
    ValueError
        For any other name.
    """
    if device == "cpu":
        return np
    if device == "gpu":
        try:
            import cupy
        except ImportError as err:
            raise RuntimeError(
                "device='gpu' needs CuPy, which is not installed: install it with "
                "`pip install 'bluesky_ptycho[gpu]'` (cupy-cuda12x), or use device='cpu'"
            ) from err
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CUDA driver missing or broken
            raise RuntimeError(
                f"device='gpu': CuPy is installed but CUDA is not usable ({err}); use device='cpu'"
            ) from err
        if n == 0:
            raise RuntimeError("device='gpu': CuPy sees no CUDA device; use device='cpu'")
        return cupy
    raise ValueError(f"device={device!r} is not known: use 'cpu' or 'gpu'")


def to_numpy(x: Array) -> np.ndarray:
    """Return *x* as a NumPy array (copies from the GPU when *x* is a CuPy array)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


_WORKERS = int(os.environ.get("BLUESKY_PTYCHO_FFT_WORKERS", "0")) or os.cpu_count() or 1


def fft2(x: Array) -> Array:
    """Orthonormal 2-D FFT over the last two axes, batched over the leading ones.

    NumPy arrays go through ``scipy.fft`` (single precision stays single, several
    threads); CuPy arrays through ``cupy.fft`` (cuFFT, plans cached by CuPy).
    """
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.fft2(x, norm="ortho", workers=_WORKERS)
    return get_xp(x).fft.fft2(x, norm="ortho")


def ifft2(x: Array) -> Array:
    """Inverse of :func:`fft2` (orthonormal, last two axes)."""
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.ifft2(x, norm="ortho", workers=_WORKERS)
    return get_xp(x).fft.ifft2(x, norm="ortho")


def fftshift2(x: Array) -> Array:
    """``fftshift`` over the last two axes."""
    return get_xp(x).fft.fftshift(x, axes=(-2, -1))


def ifftshift2(x: Array) -> Array:
    """``ifftshift`` over the last two axes."""
    return get_xp(x).fft.ifftshift(x, axes=(-2, -1))


def rfft(x: Array, n: int | None = None) -> Array:
    """Real FFT along the last axis (unnormalised forward), NumPy or CuPy, precision kept."""
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.rfft(x, n=n, axis=-1, workers=_WORKERS)
    return get_xp(x).fft.rfft(x, n=n, axis=-1)


def irfft(x: Array, n: int) -> Array:
    """Inverse of :func:`rfft` to *n* real samples along the last axis."""
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.irfft(x, n=n, axis=-1, workers=_WORKERS)
    return get_xp(x).fft.irfft(x, n=n, axis=-1)


def rfft2(x: Array) -> Array:
    """Real 2-D FFT over the last two axes (unnormalised forward)."""
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.rfft2(x, workers=_WORKERS)
    return get_xp(x).fft.rfft2(x)


def irfft2(x: Array, shape: tuple[int, int]) -> Array:
    """Inverse of :func:`rfft2` to real arrays of *shape* over the last two axes."""
    if get_xp(x) is np:
        import scipy.fft

        return scipy.fft.irfft2(x, s=shape, workers=_WORKERS)
    return get_xp(x).fft.irfft2(x, s=shape)
