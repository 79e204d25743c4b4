"""Every solver's options: one dataclass per algorithm, each field documented and checked."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class SolverOptions:
    """Options every solver has.

    Attributes
    ----------
    probe_modes : int
        Incoherent probe modes ``M`` (mixed states; 1 = a coherent probe).
        Missing modes are added to the initial probe with ``mode_power`` of
        its power each.
    mode_power : float
        Power of each added mode relative to the first, in (0, 1).
    probe_update_start : int
        First iteration (0-based) in which the probe is refined; a negative
        value never refines it.
    position_refinement_start : int
        First iteration in which positions are refined; negative: never.
        (RPIE and LSQML; DM and RAAR keep positions fixed.)
    max_position_step_px : float
        Largest position change of a view in one iteration, in pixels.
    seed : int
        Seed of the random view order and of added probe modes.
    device_memory_bytes : int or None
        Most bytes of per-frame arrays kept on the device; above it they stay
        on the host and move block by block. None: 70 % of the GPU's free
        memory on CuPy, no limit on NumPy. 0 forces the block path.
    """

    probe_modes: int = 1
    mode_power: float = 0.05
    probe_update_start: int = 1
    position_refinement_start: int = -1
    max_position_step_px: float = 0.5
    seed: int = 0
    device_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.probe_modes < 1:
            raise ValueError(f"{name}.probe_modes={self.probe_modes} must be >= 1")
        if not 0 < self.mode_power < 1:
            raise ValueError(f"{name}.mode_power={self.mode_power} must lie in (0, 1)")
        if not self.max_position_step_px > 0:
            raise ValueError(
                f"{name}.max_position_step_px={self.max_position_step_px} must be positive (pixels)"
            )
        if self.device_memory_bytes is not None and self.device_memory_bytes < 0:
            raise ValueError(
                f"{name}.device_memory_bytes={self.device_memory_bytes} must be >= 0 or None (auto)"
            )

    def _check_range(self, field: str, lo: float, hi: float, lo_open: bool = True) -> None:
        v = getattr(self, field)
        ok = (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            bracket = "(" if lo_open else "["
            raise ValueError(f"{type(self).__name__}.{field}={v} must lie in {bracket}{lo}, {hi}]")


@dataclass
class RpieOptions(SolverOptions):
    """Options of :class:`RPIE` (mini-batch ePIE/rPIE).

    Attributes
    ----------
    batch_size : int
        Views updated together. 1 is classic sequential ePIE; larger batches
        vectorise (and suit the GPU) at a small cost in convergence per pass.
    alpha : float
        rPIE regularisation of the object step, in (0, 1]: the denominator is
        ``(1 − α)·Σ|P|² + α·max Σ|P|²``. 1 gives ePIE's step.
    beta : float
        The same for the probe step.
    """

    batch_size: int = 16
    alpha: float = 0.1
    beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"RpieOptions.batch_size={self.batch_size} must be >= 1")
        self._check_range("alpha", 0, 1)
        self._check_range("beta", 0, 1)


@dataclass
class RaarOptions(SolverOptions):
    """Options of :class:`RAAR`.

    Attributes
    ----------
    beta : float
        Relaxation in (0, 1]: ``ψ ← β(ψ + P_F R_O ψ − P_O ψ) + (1 − β) P_O ψ``.
        1 is the difference map; 0.75–0.9 is steadier with noisy data.
    block_size : int
        Views processed together (memory, not convergence: the algorithm is
        global).
    overlap_iterations : int
        Alternating object/probe updates per overlap projection.
    regularization : float
        Added to the object and probe denominators, relative to their
        maximum, so weakly lit pixels do not blow up.
    fourier_relax : float
        Fourier relaxation (PtyPy's ``fourier_relax_factor``): a frame whose
        model already matches its counts to within this fraction of the
        brightest frame's amplitude is only pulled that far, not projected —
        the projection otherwise fits the noise and the iteration drifts. 0
        projects always.
    probe_support : float
        Radius of the probe's support as a fraction of the frame side (the
        probe is set to zero outside it after each update; a projection
        algorithm's probe otherwise drifts into the frame's corners). 0: none.
    """

    beta: float = 0.8
    block_size: int = 128
    overlap_iterations: int = 1
    regularization: float = 1e-3
    fourier_relax: float = 0.05
    probe_support: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("beta", 0, 1)
        if self.block_size < 1:
            raise ValueError(f"{type(self).__name__}.block_size={self.block_size} must be >= 1")
        if self.overlap_iterations < 1:
            raise ValueError(
                f"{type(self).__name__}.overlap_iterations={self.overlap_iterations} must be >= 1"
            )
        self._check_range("regularization", 0, 1)
        self._check_range("fourier_relax", 0, 1, lo_open=False)
        if not 0 <= self.probe_support <= 0.75:
            raise ValueError(
                f"{type(self).__name__}.probe_support={self.probe_support} must lie in [0, 0.75] "
                "(fraction of the frame side; 0 turns it off)"
            )


@dataclass
class DmOptions(RaarOptions):
    """Options of :class:`DifferenceMap`: RAAR's, with ``beta`` 1 (the plain difference map).

    Attributes
    ----------
    beta : float
        The difference map's own relaxation; 1 is Thibault et al.'s form.
    """

    beta: float = 1.0


@dataclass
class LsqmlOptions(SolverOptions):
    """Options of :class:`LSQML`.

    Attributes
    ----------
    noise : {"gaussian", "poisson"}
        Noise model of the likelihood: Gaussian on amplitudes (the modulus
        constraint) or Poisson on counts (a step along the likelihood's
        gradient, its length found per view by Newton's method).
    batch_size : int
        Views per update; LSQ-ML's directions are averaged over a batch.
    regularization : float
        Preconditioner regularisation δ relative to the maximum illumination
        (object) or object power (probe).
    max_step : float
        Largest step length along a direction (steps are solved per view
        and averaged over the batch).
    """

    noise: str = "gaussian"
    batch_size: int = 64
    regularization: float = 0.05
    max_step: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise not in ("gaussian", "poisson"):
            raise ValueError(f"LsqmlOptions.noise={self.noise!r} must be 'gaussian' or 'poisson'")
        if self.batch_size < 1:
            raise ValueError(f"LsqmlOptions.batch_size={self.batch_size} must be >= 1")
        self._check_range("regularization", 0, 1)
        self._check_range("max_step", 0, 10)


def options_doc(options_type: type) -> dict[str, str]:
    """Field → first line of its description, from an options class's docstrings."""
    out: dict[str, str] = {}
    for cls in reversed(options_type.__mro__):
        doc = cls.__doc__ or ""
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            name = line.strip().split(" : ")[0]
            if " : " in line and i + 1 < len(lines):
                out[name] = lines[i + 1].strip()
    return {f.name: out.get(f.name, "") for f in fields(options_type)}
