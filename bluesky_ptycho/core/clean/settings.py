"""Every setting of the nine cleaning steps, declared once (default, unit, range, doc)."""

from __future__ import annotations

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.geometry import Beamstop
from bluesky_ptycho.core.params import Declared, setting, settings

WINDOWS = ("erf", "gaussian")


@settings(frozen=True)
class CleanSettings(Declared):
    """Parameters of the cleaning steps (all in one place)."""

    adu_per_photon: float = setting(
        default=36.5, doc="Detector gain: ADU per photon at the working energy.", unit="ADU/photon",
        min=0, max=1e4, exclusive="min",
    )  # fmt: skip
    threshold_adu: float = setting(
        default=15.0, doc='"hnu": samples below this (after offsets are removed) are background, pixels '
        "above it hold photons. About 15 ADU at 800 eV: under half a photon, three times the "
        "read noise.", unit="ADU", min=0, max=65535, exclusive="min",
    )  # fmt: skip
    overscan_order: int = setting(
        default=2, doc="Order of the polynomial in readout time fitted to each channel's overscan.",
        min=0, max=2,
    )  # fmt: skip
    overscan_skip_rows: tuple[int, int] = setting(
        default=(100, 80), doc="Readout rows left out of the overscan fit at the start and the end.",
        unit="rows", length=2, min=0, max=fccd.CLOCKED_ROWS,
    )  # fmt: skip
    background: bool = setting(
        default=True, doc="Subtract the mean of each column's background pixels (step 4)."
    )
    ripple: bool = setting(
        default=True, doc="Find and remove high-frequency pickup lines (step 5)."
    )
    ripple_threshold: float = setting(
        default=10.0, doc="A frequency is pickup when its power, averaged over the channels of the batch, "
        "exceeds this many times the median power.", min=1, max=1e6, exclusive="min",
    )  # fmt: skip
    ripple_max_lines: int = setting(
        default=8, doc="At most this many pickup lines, the strongest first.", min=0, max=64
    )
    ripple_min_cycles: float = setting(
        default=0.01, doc="Frequencies below this are left to the overscan and background steps.",
        unit="cycles/sample", min=0, max=0.5, exclusive="max",
    )  # fmt: skip
    threshold_dilate: bool = setting(
        default=True, doc="Keep the 2 × 2 neighbours of pixels above the threshold (a photon's charge may "
        "split between pixels).",
    )  # fmt: skip
    beamstop: Beamstop = setting(
        default=Beamstop(), doc="The beamstop {row, col, radius, transmission}, divided out inside its "
        "radius (step 7); none by default.",
    )  # fmt: skip
    center_px: tuple[float, float] | None = setting(
        default=None, doc="Pattern centre (row, col) on the detector image; absent: found from the first "
        "batch (step 1).", kind="list", unit="px", length=2, min=0, max=max(fccd.IMAGE_SHAPE),
        optional=True,
    )  # fmt: skip
    crop_px: int = setting(
        default=512, doc="Side of the region cut out around the centre, in detector pixels.", unit="px",
        min=2, max=min(fccd.IMAGE_SHAPE),
    )  # fmt: skip
    frame_px: int = setting(
        default=128, doc="Side of the output frames after Fourier downsampling.", unit="px", min=2,
        max=min(fccd.IMAGE_SHAPE),
    )  # fmt: skip
    window: str = setting(
        default="erf", doc="Downsampling window: (erf((0.99·m/2 − r)/window_width) + 1)/2 in Fourier "
        "space, or a Gaussian kernel of σ = window_width detector pixels in real space.",
        choices=WINDOWS,
    )  # fmt: skip
    window_width: float = setting(
        default=8.0,
        doc="Width of the downsampling window.",
        unit="px",
        min=0,
        max=1000,
        exclusive="min",
    )
    noise_floor_photons: float = setting(
        default=0.0, doc="Subtracted from the output, which is then clipped at 0.", unit="photons", min=0,
        max=1e6,
    )  # fmt: skip
    saturation_adu: float = setting(
        default=65535.0, doc="Raw samples at or above this are saturated; a frame with saturated pixels "
        "inside its crop is flagged.", unit="ADU", min=0, max=65535, exclusive="min",
    )  # fmt: skip

    def normalize(self) -> None:
        if isinstance(self.beamstop, dict):
            self._set("beamstop", Beamstop.from_dict(self.beamstop))
        if self.center_px is not None and not isinstance(self.center_px, str):
            self._set("center_px", tuple(float(c) for c in self.center_px))
        if isinstance(self.overscan_skip_rows, list):
            self._set("overscan_skip_rows", tuple(self.overscan_skip_rows))

    def check(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"CleanSettings.{name}={getattr(self, name)!r} {why}")

        lo, hi = self.overscan_skip_rows
        if lo + hi > fccd.CLOCKED_ROWS - 10:
            bad(
                "overscan_skip_rows",
                f"leaves fewer than 10 of the {fccd.CLOCKED_ROWS} readout rows to fit",
            )
        if self.frame_px % 2:
            bad("frame_px", "must be even")
        if self.crop_px % self.frame_px:
            bad("crop_px", f"must be a multiple of frame_px={self.frame_px}")
        if not self.saturation_adu > self.threshold_adu:
            bad("saturation_adu", f"must exceed threshold_adu={self.threshold_adu}")
