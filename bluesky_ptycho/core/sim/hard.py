"""Hard cases: scans simulated from the physics, apart from the demo's conveniences.

The demo's simulator (:mod:`.scan`) makes data with the solvers' own model:
the object on the reconstruction grid, the probe shifted as the solvers shift
it, the positions exact, the starting probe close. A beamline's scan has none
of these kindnesses; this module simulates one that has all of them wrong in
known ways, each case adding one difficulty (:data:`CASES`):

- **Sampling the model cannot represent**: the sample is drawn on a grid
  twice as fine as the reconstruction's; each exit wave is formed there and
  propagated on 2H × 2W samples, and the detector records the central H × W
  of that far field (what scatters beyond its edge is lost). The truth a
  reconstruction can reach is the fine object low-passed to the detector's
  aperture (:attr:`HardScan.object`).
- **The optics**: a Fresnel zone plate with a central stop, out of focus, its
  pupil sampled four times per fine pixel at its edges (area-weighted), a
  little astigmatism (a real zone plate's), propagated by the angular
  spectrum. The file's starting probe is the textbook one: the nominal
  defocus off by a stated fraction, no central stop, no astigmatism.
- **Positions** are encoder readings: the true ones plus uniform sub-pixel
  errors, random errors of up to 2 px and a slow drift over the scan time.
- **Partial coherence**: a source of finite size, each source point a tilted
  illumination whose focus sits elsewhere; the intensities are the
  incoherent sum over the source points (no fixed number of modes; a few
  carry almost all the power).
- **Dose**: Poisson counts at the stated photons per frame.
- **Frames lost or bad**: frames never written (holes in the scan) and
  frames read during a beam dump (a few percent of the flux).

Pure NumPy; reproducible from a seed. Nothing here calls the demo's
simulator or the solvers' operators.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bluesky_ptycho.core.geometry import wavelength_m

#: geometry shared by the cases (SI units): 710 eV (Fe L3), 0.1 m to a detector
#: of 60 µm pixels (after binning); the object pixel is λz / (H · pixel)
ENERGY_EV = 710.0
DISTANCE_M = 0.10
PIXEL_M = 60e-6
#: zone plate: 160 µm across, 45 nm outer zones, 65 µm central stop
ZP_DIAMETER_M = 160e-6
ZP_OUTER_ZONE_M = 45e-9
ZP_STOP_M = 65e-6
#: the sample sits 28 µm downstream of the focus (a ~1.1 µm annular spot)
DEFOCUS_M = 28e-6


@dataclass(frozen=True)
class HardCase:
    """One hard case: a scan and what is wrong with it.

    Attributes
    ----------
    name : str
    what : str
        One line on what makes it hard.
    points : int
        Scan points (before frames are lost).
    frame_px : int
        Detector frame side H = W (the detector's pixels keep their size:
        a larger frame reaches higher angles, so finer object pixels).
    photons : float
        Photons per frame entering the sample.
    pattern : {"fermat", "raster"}
    step_m : float
        Mean distance between neighbouring points.
    encoder_px : float
        Uniform error of every reported position, ± this many object pixels.
    random_px : float
        Standard deviation of further Gaussian position errors (clipped at 2 px).
    drift_px : float
        A slow drift over the scan: the true position wanders by this much
        (a smooth curve in time, both axes) from the reported one.
    source_points : int
        Source points per side of a finite source (1: a coherent beam).
    source_sigma_px : float
        Spread of the focus positions the source points make, in object px.
    strong_phase : bool
        A thick sample: phase shifts past 2π (wraps), strong absorption.
    missing : float
        Fraction of frames never written.
    beam_dump : float
        Fraction of frames measured with 2 % of the flux (a beam dump).
    defocus_error : float
        The starting probe's defocus is the true one times (1 + this).
    seed : int
    """

    name: str
    what: str
    points: int = 400
    frame_px: int = 128
    photons: float = 3e6
    pattern: str = "fermat"
    step_m: float = 350e-9
    encoder_px: float = 0.5
    random_px: float = 0.0
    drift_px: float = 0.0
    source_points: int = 1
    source_sigma_px: float = 0.0
    strong_phase: bool = False
    missing: float = 0.0
    beam_dump: float = 0.0
    defocus_error: float = 0.4
    seed: int = 0

    @property
    def object_pixel_m(self) -> float:
        return wavelength_m(ENERGY_EV) * DISTANCE_M / (self.frame_px * PIXEL_M)


#: The benchmark's cases (each also has a small version for the tests: :func:`small`).
CASES: dict[str, HardCase] = {
    c.name: c
    for c in (
        HardCase("a_probe", "starting probe: defocus 40 % off, no central stop; positions exact",
                 encoder_px=0.0, seed=1),
        HardCase("b_positions", "positions: ±0.5 px encoder, 0.8 px random (≤ 2 px), 2.5 px drift",
                 random_px=0.8, drift_px=2.5, seed=2),
        HardCase("c_dose_1e5", "low dose: 1e5 photons a frame", photons=1e5, seed=3),
        HardCase("c_dose_1e4", "low dose: 1e4 photons a frame", photons=1e4, seed=4),
        HardCase("d_coherence", "partial coherence: a 3 × 3-point source (three modes carry "
                 "most of the power)", source_points=3, source_sigma_px=2.0, seed=5),
        HardCase("e_raster", "raster grid (the raster ambiguity)", pattern="raster", seed=6),
        HardCase("f_phase", "strong phase object: phase wraps past 2π, strong absorption",
                 strong_phase=True, seed=7),
        HardCase("g_missing", "5 % of frames bad: 3 % never written, 2 % during a beam dump",
                 missing=0.03, beam_dump=0.02, seed=8),
        HardCase("h_large", "large scan: 1600 frames of 256²", points=1600, frame_px=256,
                 seed=9),
    )
}  # fmt: skip


def small(case: HardCase, points: int = 144, frame_px: int = 64) -> HardCase:
    """A small version of *case* for the tests: the same physics and faults, fewer points
    and smaller frames. The detector's pixels keep their size, so the object pixels grow
    (by ``case.frame_px / frame_px``); the probe and the step keep their size in m, and
    the position errors and the source's spread keep theirs (fewer pixels)."""
    k = frame_px / case.frame_px
    return replace(case, points=points, frame_px=frame_px, encoder_px=case.encoder_px * k,
                   random_px=case.random_px * k, drift_px=case.drift_px * k,
                   source_sigma_px=case.source_sigma_px * k)  # fmt: skip


@dataclass
class HardScan:
    """A simulated scan and its truth.

    Attributes
    ----------
    case : HardCase
    frames : (N, H, W) float32
        Photon counts, DC at the centre (frames never written are absent).
    positions_m : (N, 2) float64
        Reported (x, y) stage positions, m.
    true_positions_m : (N, 2) float64
        Where the views really were.
    start_probe : (H, W) complex64
        The starting probe a user would give (wrong defocus, no stop), scaled
        so that ``Σ|P|²`` is the mean counts of a frame.
    probe : (K, H, W) complex64
        The true probe, one array per source point (intensities add), on the
        reconstruction's grid (the detector's aperture), scaled alike.
    object : (Y, X) complex64
        The true object as the detector's aperture passes it, on a grid of
        pixel ``object_pixel_m`` whose pixel (0, 0) centre is at
        ``object_origin_m`` (x, y).
    object_origin_m : (float, float)
    object_pixel_m : float
    energy_ev, distance_m, pixel_m : float
    bad : (N,) bool
        Frames taken during a beam dump.
    """

    case: HardCase
    frames: np.ndarray
    positions_m: np.ndarray
    true_positions_m: np.ndarray
    start_probe: np.ndarray
    probe: np.ndarray
    object: np.ndarray
    object_origin_m: tuple[float, float]
    object_pixel_m: float
    energy_ev: float = ENERGY_EV
    distance_m: float = DISTANCE_M
    pixel_m: float = PIXEL_M
    bad: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def truth_on(self, shape: tuple[int, int], origin_m: tuple[float, float]) -> np.ndarray:
        """The true object on another grid of the same pixel whose pixel (0, 0) is at *origin_m*.

        The two origins must differ by whole pixels (grids snapped to the
        pixel, as :func:`~bluesky_ptycho.core.ptycho.object_grid` makes
        them); pixels outside the simulated object are 1.
        """
        off = (np.asarray(origin_m) - np.asarray(self.object_origin_m)) / self.object_pixel_m
        ox, oy = (int(v) for v in np.round(off))
        if not np.allclose(off, np.round(off), atol=1e-3):
            raise ValueError(f"grid origins differ by {off} px: not whole pixels")
        out = np.ones(shape, np.complex64)
        ny, nx = self.object.shape
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + shape[0], ny), min(ox + shape[1], nx)
        if y1 > y0 and x1 > x0:
            out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = self.object[y0:y1, x0:x1]
        return out


# ----------------------------------------------------------------------- optics
def zone_plate_probe(
    n: int,
    pixel_m: float,
    defocus_m: float,
    stop_m: float = ZP_STOP_M,
    astigmatism_m: float = 0.0,
    tilt_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The field a zone plate makes *defocus_m* past its focus, on an n × n grid of *pixel_m*.

    The pupil (the zone plate's aperture less its central stop, area-weighted
    by 4 × 4 sub-samples per pupil sample at its edges) in the spatial
    frequency plane, the angular-spectrum propagator ``exp(−iπλz|q|²)``
    with the defocus split ``± astigmatism_m/2`` between the two axes, and a
    tilt that moves the focus by *tilt_px* (row, column) object pixels (a
    source point off the axis). Normalised to ``Σ|P|² = 1``, centred.
    """
    lam = wavelength_m(ENERGY_EV)
    f = ZP_DIAMETER_M * ZP_OUTER_ZONE_M / lam
    q = np.fft.fftfreq(n, d=pixel_m)
    dq = q[1] - q[0]
    sub = (np.arange(4) - 1.5) / 4 * dq
    pupil = np.zeros((n, n))
    for sy in sub:  # area weights: the mean over 4 × 4 sub-samples of each pupil sample
        for sx in sub:
            r = lam * f * np.hypot(q[:, None] + sy, q[None, :] + sx)
            pupil += (r <= ZP_DIAMETER_M / 2) & (r >= stop_m / 2)
    pupil /= 16
    qy, qx = q[:, None], q[None, :]
    zy, zx = defocus_m + astigmatism_m / 2, defocus_m - astigmatism_m / 2
    phase = -np.pi * lam * (zy * qy**2 + zx * qx**2)
    phase += -2 * np.pi * (qy * tilt_px[0] + qx * tilt_px[1]) * pixel_m
    field_q = pupil * np.exp(1j * phase)
    probe = np.fft.fftshift(np.fft.ifft2(field_q))
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


# ----------------------------------------------------------------------- sample
def sample(shape: tuple[int, int], pixel_m: float, rng: np.random.Generator,
           strong: bool = False) -> np.ndarray:  # fmt: skip
    """A sample from its thickness: transmission ``exp(−i k (δ − iβ) t)`` on a grid of *pixel_m*.

    Polystyrene-like spheres of 40–150 nm radius (phase up to about 2 rad),
    a few gold-like particles (absorbing), a lithographed test pattern (bars
    of 1–6 px and a grating, nickel-like) and a rough support film.
    *strong*: every thickness ×3 and spheres up to 250 nm, so the phase
    reaches about 10 rad and wraps.
    """
    ny, nx = shape
    k = 2 * np.pi / wavelength_m(ENERGY_EV)
    # (δ, β) near 710 eV, order of magnitude (Henke tables)
    poly, gold, nickel = (2.0e-3, 2.5e-4), (1.2e-3, 1.4e-3), (4.0e-3, 2.2e-3)
    ext_y, ext_x = ny * pixel_m, nx * pixel_m
    phase = np.zeros(shape)
    absorb = np.zeros(shape)
    scale = 3.0 if strong else 1.0

    def add(sl: tuple, t: np.ndarray, material: tuple[float, float]) -> None:
        phase[sl] += k * material[0] * t * scale
        absorb[sl] += k * material[1] * t * scale

    def ball(r: float, material: tuple[float, float]) -> None:
        y0, x0 = rng.uniform(0, ext_y), rng.uniform(0, ext_x)
        sl = _window(y0, x0, r, pixel_m, shape)
        yy = (np.arange(sl[0].start, sl[0].stop) * pixel_m - y0)[:, None]
        xx = (np.arange(sl[1].start, sl[1].stop) * pixel_m - x0)[None, :]
        add(sl, 2 * np.sqrt(np.maximum(r * r - yy**2 - xx**2, 0)), material)

    n_spheres = int(ext_y * ext_x / (0.6e-6) ** 2)
    for _ in range(n_spheres):
        ball(rng.uniform(40e-9, 250e-9 if strong else 150e-9), poly)
    for _ in range(max(4, n_spheres // 10)):
        ball(rng.uniform(20e-9, 80e-9), gold)
    # a test pattern near the centre: bars of 1–6 px and a grating, 40 nm of nickel
    pattern = np.zeros(shape)
    cy, cx = ny // 2, nx // 2
    x = cx - 60
    for w in (1, 2, 3, 4, 6):
        pattern[cy - 30 : cy - 5, x : x + w] = 1
        pattern[cy + 5 : cy + 30, x : x + 3 * w] = 1 if w < 4 else 0
        x += 3 * w + 4
    period = 4
    pattern[cy - 40 : cy - 34, cx - 60 : cx + 40] = (
        (np.arange(cx - 60, cx + 40) % period) < period // 2
    )[None, :]
    add((slice(None), slice(None)), pattern * 40e-9, nickel)
    # a rough support film: 20 ± 5 nm, correlated over ~50 nm
    rough = np.fft.ifft2(
        np.fft.fft2(rng.standard_normal(shape))
        * np.exp(-0.5 * (np.hypot(*np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx),
                                                indexing="ij")) * 50e-9 / pixel_m * 2 * np.pi) ** 2)
    ).real  # fmt: skip
    rough *= 5e-9 / max(rough.std(), 1e-30)
    add((slice(None), slice(None)), 20e-9 + rough, poly)
    return (np.exp(-absorb) * np.exp(-1j * phase)).astype(np.complex64)


def _window(y0: float, x0: float, r: float, px: float, shape: tuple[int, int]) -> tuple:
    ny, nx = shape
    i0, i1 = max(int((y0 - r) / px) - 1, 0), min(int((y0 + r) / px) + 2, ny)
    j0, j1 = max(int((x0 - r) / px) - 1, 0), min(int((x0 + r) / px) + 2, nx)
    return (slice(i0, i1), slice(j0, j1))


# ----------------------------------------------------------------------- scan
def _positions(case: HardCase, rng: np.random.Generator) -> np.ndarray:
    """True (x, y) positions in m, centred on 0, in scan order."""
    n, step = case.points, case.step_m
    if case.pattern == "raster":
        side = int(np.ceil(np.sqrt(n)))
        k = np.arange(n)
        return np.stack(
            [(k % side - (side - 1) / 2) * step, (k // side - (side - 1) / 2) * step], 1
        )
    k = np.arange(n)
    r = step / np.sqrt(np.pi) * np.sqrt(k + 0.5)
    theta = k * np.deg2rad(137.50776405003785)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)


def _position_errors(case: HardCase, rng: np.random.Generator) -> np.ndarray:
    """Reported − true, in object px (N, 2) (x, y)."""
    n = case.points
    err = (
        rng.uniform(-case.encoder_px, case.encoder_px, (n, 2))
        if case.encoder_px
        else np.zeros((n, 2))
    )
    if case.random_px:
        err += np.clip(rng.normal(0, case.random_px, (n, 2)), -2, 2)
    if case.drift_px:
        t = np.linspace(0, 1, n)[:, None]
        phase = rng.uniform(0, 2 * np.pi, 2)
        err += case.drift_px * (
            0.7 * t + 0.3 * np.sin(np.pi * t + phase[None, :]) - 0.3 * np.sin(phase[None, :])
        )
    return err


def simulate(case: HardCase) -> HardScan:
    """Simulate *case* (module docstring): the frames a beamline would write, and the truth."""
    rng = np.random.default_rng(case.seed)
    h = case.frame_px
    px = case.object_pixel_m
    true_xy = _positions(case, rng)
    err_px = _position_errors(case, rng)
    reported_xy = true_xy + err_px * px
    # the object: on a fine grid (px/2) covering every true view with 48 px to spare
    lo = np.floor(np.minimum(true_xy, reported_xy).min(0) / px) - 48
    hi = np.ceil(np.maximum(true_xy, reported_xy).max(0) / px) + 48
    nx, ny = (hi - lo).astype(int) + h + 1
    origin = lo * px  # (x, y) of coarse pixel (0, 0); the probe's centre is h/2 px on
    fine = sample((2 * ny, 2 * nx), px / 2, rng, case.strong_phase)
    # probes on the fine grid (2h samples of px/2): one per source point
    offsets = [(0.0, 0.0)]
    weights = np.array([1.0])
    if case.source_points > 1:
        g = np.linspace(-1, 1, case.source_points) * case.source_sigma_px
        offsets = [(float(a), float(b)) for a in g for b in g]
        weights = np.array([np.exp(-0.5 * (a * a + b * b) / case.source_sigma_px**2)
                            for a, b in offsets])  # fmt: skip
        weights /= weights.sum()
    astig = 0.06 * DEFOCUS_M
    fine_probes = np.stack([
        zone_plate_probe(2 * h, px / 2, DEFOCUS_M, astigmatism_m=astig,
                         tilt_px=(2 * o[0], 2 * o[1])) * np.sqrt(w)
        for o, w in zip(offsets, weights, strict=True)
    ])  # fmt: skip
    # views: the fine grid's corner of each true view, sub-pixel part as a probe shift
    corner_fine = (true_xy / px - lo) * 2  # (x, y) fine px of the view's corner
    frames = np.empty((case.points, h, h), np.float32)
    qy = np.fft.fftfreq(2 * h)[:, None]
    qx = np.fft.fftfreq(2 * h)[None, :]
    probes_q = np.fft.fft2(fine_probes)
    lo_c, hi_c = h // 2, h // 2 + h  # the detector: the central h of the 2h far field
    for j in range(case.points):
        cx, cy = corner_fine[j]
        ix, iy = int(np.floor(cx)), int(np.floor(cy))
        fx, fy = cx - ix, cy - iy
        ramp = np.exp(-2j * np.pi * (qy * fy + qx * fx))
        shifted = np.fft.ifft2(probes_q * ramp[None])
        patch = fine[iy : iy + 2 * h, ix : ix + 2 * h]
        far = np.fft.fftshift(np.fft.fft2(shifted * patch[None]), axes=(-2, -1))
        frames[j] = np.sum(np.abs(far[:, lo_c:hi_c, lo_c:hi_c]) ** 2, axis=0)
    # photons: the probe's power is the flux; what scatters off the detector is lost
    frames *= case.photons / float(np.sum(np.abs(fine_probes) ** 2) * (2 * h) ** 2)
    bad = np.zeros(case.points, bool)
    if case.beam_dump:
        bad[rng.choice(case.points, round(case.beam_dump * case.points), replace=False)] = True
        frames[bad] *= 0.02
    counts = rng.poisson(frames).astype(np.float32)
    keep = np.ones(case.points, bool)
    if case.missing:
        keep[rng.choice(np.flatnonzero(~bad), round(case.missing * case.points),
                        replace=False)] = False  # fmt: skip
    # the truth as the detector passes it: the fine object low-passed to h/(2h) of its band
    coarse = _fourier_bin(fine)
    probes_c = np.stack([_fourier_bin(p) for p in fine_probes])
    mean_counts = float(counts[keep & ~bad].sum(axis=(1, 2)).mean())
    probes_c *= np.sqrt(mean_counts / float(np.sum(np.abs(probes_c) ** 2)))
    start = zone_plate_probe(h, px, DEFOCUS_M * (1 + case.defocus_error), stop_m=0.0)
    start = start * np.float32(np.sqrt(mean_counts))
    return HardScan(
        case=case,
        frames=counts[keep],
        positions_m=reported_xy[keep],
        true_positions_m=true_xy[keep],
        start_probe=start.astype(np.complex64),
        probe=probes_c.astype(np.complex64),
        object=coarse,
        object_origin_m=(float(origin[0]), float(origin[1])),
        object_pixel_m=px,
        bad=bad[keep],
    )


def _fourier_bin(a: np.ndarray) -> np.ndarray:
    """Half the samples per axis, keeping the central half of the spectrum (an ideal low-pass)."""
    ny, nx = a.shape
    my, mx = ny // 2, nx // 2
    f = np.fft.fftshift(np.fft.fft2(a))  # DC at (ny // 2, nx // 2)
    y0, x0 = ny // 2 - my // 2, nx // 2 - mx // 2  # the crop's DC at (my // 2, mx // 2)
    c = f[y0 : y0 + my, x0 : x0 + mx]
    return (np.fft.ifft2(np.fft.ifftshift(c)) * (my * mx / (ny * nx))).astype(np.complex64)
