"""Experiment geometry in SI units, and what follows from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bluesky_ptycho.core.params import Declared, setting, settings

PLANCK_EV_S = 4.135667696e-15  # h in eV·s
SPEED_OF_LIGHT = 299_792_458.0  # m/s
EV_TO_J = 1.602176634e-19


def wavelength_m(energy_ev: float) -> float:
    """Photon wavelength in metres for a photon energy in eV."""
    return PLANCK_EV_S * SPEED_OF_LIGHT / energy_ev


@dataclass(frozen=True)
class Geometry:
    """Far-field geometry of a ptychography measurement.

    Parameters
    ----------
    energy_ev : float
        Photon energy in eV.
    distance_m : float
        Sample-to-detector distance in m.
    pixel_size_m : float
        Physical detector pixel size in m (30 µm for the FCCD).
    crop_px : int
        Side of the square region cut out of the detector around the pattern's
        centre, in detector pixels.
    frame_px : int
        Side of the frames the reconstruction works on, after Fourier
        downsampling of the crop (``crop_px`` must be a multiple of it).
    """

    energy_ev: float = 800.0
    distance_m: float = 0.080
    pixel_size_m: float = 30e-6
    crop_px: int = 512
    frame_px: int = 128

    def __post_init__(self) -> None:
        for name in ("energy_ev", "distance_m", "pixel_size_m"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Geometry.{name}={value!r} must be positive (SI units)")
        if self.frame_px <= 0 or self.crop_px < self.frame_px or self.crop_px % self.frame_px:
            raise ValueError(
                f"Geometry.crop_px={self.crop_px} must be a positive multiple of "
                f"frame_px={self.frame_px}"
            )

    @property
    def wavelength_m(self) -> float:
        """Wavelength λ in m."""
        return wavelength_m(self.energy_ev)

    @property
    def energy_j(self) -> float:
        """Photon energy in J (CXI's unit)."""
        return self.energy_ev * EV_TO_J

    @property
    def downsample(self) -> int:
        """Fourier downsampling factor from the detector crop to the frames."""
        return self.crop_px // self.frame_px

    @property
    def frame_pixel_size_m(self) -> float:
        """Effective detector pixel of the downsampled frames, in m."""
        return self.pixel_size_m * self.downsample

    @property
    def object_pixel_size_m(self) -> float:
        """Real-space pixel of object and probe: λ·z / (crop_px · pixel_size)."""
        return self.wavelength_m * self.distance_m / (self.crop_px * self.pixel_size_m)

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for documents and files."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, md: dict) -> Geometry:
        """The geometry in a run's ``"ptycho"`` start metadata (as ``ptycho_scan`` writes it)."""
        return cls(
            energy_ev=md["energy_ev"],
            distance_m=md["distance_m"],
            pixel_size_m=md["pixel_size_m"],
            crop_px=md["crop_px"],
            frame_px=md["frame_px"],
        )


@dataclass(frozen=True)
class ZonePlate:
    """A Fresnel zone plate focusing the beam, and the sample's distance from focus.

    Parameters
    ----------
    diameter_m : float
        Zone plate diameter D in m.
    outer_zone_m : float
        Outermost zone width Δr in m (sets the focal length f = D·Δr/λ).
    central_stop_m : float
        Diameter of the central stop in m (0 for none).
    defocus_m : float
        Distance of the sample plane from the focus in m (positive: downstream).
    """

    diameter_m: float = 240e-6
    outer_zone_m: float = 60e-9
    central_stop_m: float = 100e-6
    defocus_m: float = 15e-6

    def __post_init__(self) -> None:
        if not self.diameter_m > 0 or not self.outer_zone_m > 0:
            raise ValueError(
                f"ZonePlate diameter_m={self.diameter_m!r} and outer_zone_m="
                f"{self.outer_zone_m!r} must be positive (m)"
            )
        if not 0 <= self.central_stop_m < self.diameter_m:
            raise ValueError(
                f"ZonePlate.central_stop_m={self.central_stop_m!r} must lie in "
                f"[0, diameter_m={self.diameter_m!r})"
            )

    def focal_length_m(self, energy_ev: float) -> float:
        """Focal length f = D·Δr/λ in m."""
        return self.diameter_m * self.outer_zone_m / wavelength_m(energy_ev)

    def as_dict(self) -> dict[str, float]:
        """Plain dict for documents and files."""
        return asdict(self)


@settings(frozen=True)
class Beamstop(Declared):
    """A semi-transparent beamstop in front of the detector."""

    center_px: tuple[float, float] = setting(
        default=(960.0, 480.0), doc="Its centre on the assembled detector image, (row, col) (measured "
        "once; it does not move with the sample).", unit="px", length=2, min=-1e4, max=1e4,
    )  # fmt: skip
    radius_px: float = setting(
        default=0.0, doc="Radius (0: no beamstop).", unit="px", min=0, max=1e4
    )
    transmission: float = setting(
        default=1.0, doc="Intensity fraction that passes inside the radius, e.g. 0.05.", min=0, max=1,
        exclusive="min",
    )  # fmt: skip

    def normalize(self) -> None:
        if isinstance(self.center_px, list):
            self._set("center_px", tuple(self.center_px))

    def transmission_map(self, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> Any:
        """Transmission per pixel of a ``shape`` window whose first pixel is image pixel *origin*.

        The edge is area-weighted over one pixel. Returns a float32 NumPy array.
        """
        import numpy as np

        rows = np.arange(shape[0], dtype=np.float64) + origin[0] - self.center_px[0]
        cols = np.arange(shape[1], dtype=np.float64) + origin[1] - self.center_px[1]
        r = np.hypot(rows[:, None], cols[None, :])
        inside = np.clip(self.radius_px + 0.5 - r, 0.0, 1.0)
        return (1.0 - inside * (1.0 - self.transmission)).astype(np.float32)

    @classmethod
    def from_dict(cls, d: Any) -> Beamstop:
        """A beamstop from ``{center_px, radius_px, transmission}`` (None or empty: none).

        Raises ValueError naming what is missing, unknown or out of range.
        """
        if not d:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(
                f"beamstop = {d!r:.80}: expected a table {{center_px = [row, col], radius_px = R, "
                "transmission = T}"
            )
        known = {"center_px", "radius_px", "transmission"}
        if unknown := sorted(set(d) - known):
            raise ValueError(
                f"beamstop: {unknown} are not beamstop settings; they are {sorted(known)}"
            )
        if missing := sorted(known - set(d)):
            raise ValueError(
                f"beamstop {d!r:.80} lacks {missing}: give center_px = [row, col] (px), "
                "radius_px (px) and transmission (0 < T <= 1)"
            )
        return cls(**d)
