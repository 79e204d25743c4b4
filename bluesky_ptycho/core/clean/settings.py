"""Every setting of the nine cleaning steps, with its default, unit and range."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.geometry import Beamstop

WINDOWS = ("erf", "gaussian")


@dataclass(frozen=True)
class CleanSettings:
    """Parameters of the cleaning steps (all in one place).

    Attributes
    ----------
    adu_per_photon : float
        Detector gain, ADU per photon at the working energy.
    threshold_adu : float
        "hnu": samples below this (after offsets are removed) are background,
        pixels above it hold photons. About 15 ADU at 800 eV: under half a
        photon, three times the read noise.
    overscan_order : int
        Order (0, 1 or 2) of the polynomial in readout time fitted to each
        channel's overscan.
    overscan_skip_rows : (int, int)
        Readout rows left out of the fit at the start and the end.
    background : bool
        Subtract the mean of each column's background pixels (step 4).
    ripple : bool
        Find and remove high-frequency pickup lines (step 5).
    ripple_threshold : float
        A frequency is pickup when its power, averaged over the channels of
        the batch, exceeds this many times the median power.
    ripple_max_lines : int
        At most this many pickup lines, the strongest first.
    ripple_min_cycles : float
        Frequencies below this (cycles per clocked sample) are left to the
        overscan and background steps.
    threshold_dilate : bool
        Keep the 2 × 2 neighbours of pixels above the threshold (a photon's
        charge may split between pixels).
    beamstop : Beamstop
        Divided out inside its radius (step 7); none by default.
    center_px : (float, float) or None
        Pattern centre (row, col) on the detector image; None finds it from
        the first batch (step 1).
    crop_px : int
        Side of the region cut out around the centre, in detector pixels.
    frame_px : int
        Side of the output frames after Fourier downsampling.
    window : {"erf", "gaussian"}
        Downsampling window: ``(erf((0.99·m/2 − r)/window_width) + 1)/2`` in
        Fourier space, or a Gaussian kernel of σ = ``window_width`` detector
        pixels in real space.
    window_width : float
    noise_floor_photons : float
        Subtracted from the output, which is then clipped at 0.
    saturation_adu : float
        Raw samples at or above this are saturated; a frame with saturated
        pixels inside its crop is flagged.
    """

    adu_per_photon: float = 36.5
    threshold_adu: float = 15.0
    overscan_order: int = 2
    overscan_skip_rows: tuple[int, int] = (100, 80)
    background: bool = True
    ripple: bool = True
    ripple_threshold: float = 10.0
    ripple_max_lines: int = 8
    ripple_min_cycles: float = 0.01
    threshold_dilate: bool = True
    beamstop: Beamstop = field(default_factory=Beamstop)
    center_px: tuple[float, float] | None = None
    crop_px: int = 512
    frame_px: int = 128
    window: str = "erf"
    window_width: float = 8.0
    noise_floor_photons: float = 0.0
    saturation_adu: float = 65535.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"CleanSettings.{name}={getattr(self, name)!r} {why}")

        if isinstance(self.beamstop, dict):
            object.__setattr__(self, "beamstop", Beamstop.from_dict(self.beamstop))
        if self.center_px is not None:
            object.__setattr__(self, "center_px", tuple(float(c) for c in self.center_px))
        object.__setattr__(self, "overscan_skip_rows", tuple(self.overscan_skip_rows))
        if not self.adu_per_photon > 0:
            bad("adu_per_photon", "must be > 0 (ADU per photon at the working energy)")
        if not self.threshold_adu > 0:
            bad("threshold_adu", "must be > 0 ADU (about 3 × the read noise)")
        if self.overscan_order not in (0, 1, 2):
            bad("overscan_order", "must be 0, 1 or 2")
        lo, hi = self.overscan_skip_rows
        if lo < 0 or hi < 0 or lo + hi > fccd.CLOCKED_ROWS - 10:
            bad(
                "overscan_skip_rows",
                f"leaves fewer than 10 of the {fccd.CLOCKED_ROWS} readout rows to fit",
            )
        if not self.ripple_threshold > 1:
            bad("ripple_threshold", "must be > 1 (times the median power; 10 is usual)")
        if not 0 <= self.ripple_max_lines <= 64:
            bad("ripple_max_lines", "must be between 0 and 64")
        if not 0 <= self.ripple_min_cycles < 0.5:
            bad("ripple_min_cycles", "must lie in [0, 0.5) cycles per sample")
        if self.frame_px < 2 or self.frame_px % 2:
            bad("frame_px", "must be even and >= 2")
        if self.crop_px % self.frame_px or self.crop_px > min(fccd.IMAGE_SHAPE):
            bad(
                "crop_px",
                f"must be a multiple of frame_px={self.frame_px} and at most "
                f"{min(fccd.IMAGE_SHAPE)}",
            )
        if self.window not in WINDOWS:
            bad("window", f"is not known: use one of {WINDOWS}")
        if not self.window_width > 0:
            bad("window_width", "must be > 0 pixels")
        if not self.noise_floor_photons >= 0:
            bad("noise_floor_photons", "must be >= 0 photons")
        if not self.saturation_adu > self.threshold_adu:
            bad("saturation_adu", "must exceed threshold_adu")

    def as_dict(self) -> dict:
        """Plain dict for documents (the beamstop as a dict)."""
        d = asdict(self)
        d["beamstop"] = self.beamstop.as_dict()
        d["center_px"] = list(self.center_px) if self.center_px is not None else None
        d["overscan_skip_rows"] = list(self.overscan_skip_rows)
        return d
