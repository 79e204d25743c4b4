"""Every solver's options, declared once: one settings class per algorithm (default, range, doc)."""

from __future__ import annotations

from bluesky_ptycho.core.params import Declared, declared, setting, settings

#: caps that keep a typo from becoming a scan-long hang or an out-of-memory crash
MAX_BATCH = 65536
MAX_ITERATION = 1_000_000


@settings
class SolverOptions(Declared):
    """Options every solver has."""

    probe_modes: int = setting(
        default=1, doc="Incoherent probe modes M (mixed states; 1 = a coherent probe). Missing modes are "
        "added to the initial probe with mode_power of its power each.", min=1, max=32,
    )  # fmt: skip
    mode_power: float = setting(
        default=0.05,
        doc="Power of each added mode relative to the first.",
        min=0,
        max=1,
        exclusive=True,
    )
    probe_update_start: int = setting(
        default=1, doc="First iteration (0-based) in which the probe is refined; negative: never.",
        min=-1, max=MAX_ITERATION,
    )  # fmt: skip
    position_refinement_start: int = setting(
        default=0, doc="First iteration in which positions may be refined; negative: never (RPIE and "
        "LSQML; DM and RAAR keep positions fixed). Refinement begins there or later, once "
        "the probe has settled (probe_settled).", min=-1, max=MAX_ITERATION,
    )  # fmt: skip
    probe_settled: float = setting(
        default=0.02, doc="Positions are refined from the first iteration after two in a row in which the "
        "probe changed by less than this fraction of its norm (a probe still far off would "
        "pull the positions with it). 0: from position_refinement_start regardless.",
        min=0, max=1,
    )  # fmt: skip
    object_restart: float = setting(
        default=0.5, doc="When the probe has settled (probe_settled) this far from its start (relative "
        "distance, global phase and scale removed), the object restarts flat, once, and the "
        "probe is held for that iteration: an object built around a probe that was far off "
        "carries that probe's errors as broad, slowly fading errors over the whole field (on a "
        "large scan, many iterations), which an object rebuilt with the settled probe never "
        "has. 0: never restart.", min=0, max=1,
    )  # fmt: skip
    step_adapt: bool = setting(
        default=True, doc="Halve the object and probe steps when the data error has stopped falling "
        "(over three iterations, by less than 1 − step_adapt_ratio): at the noise floor of a "
        "stochastic solver the image then averages over more frames, its error drops and its "
        "changes shrink, so the convergence stop can tell it is done."
    )  # fmt: skip
    step_adapt_start: int = setting(
        default=10,
        doc="First iteration at which the step may be lowered.",
        min=0,
        max=MAX_ITERATION,
    )
    step_adapt_ratio: float = setting(
        default=0.995, doc="The data error has stopped falling when it is above this fraction of its value "
        "three iterations before.", min=0, max=1, exclusive=True,
    )  # fmt: skip
    min_step_scale: float = setting(
        default=0.125, doc="The step is never lowered below this fraction of its start.", min=0, max=1,
        exclusive="min",
    )  # fmt: skip
    stop_tolerance: float = setting(
        default=4e-3, doc="The convergence stop: iterating ends when the object's remaining change, "
        "estimated from its recent changes as a geometric series, is below this fraction of "
        "its norm (the unit of the object error). 0: never stop early (run the iterations "
        "asked for).", min=0, max=1,
    )  # fmt: skip
    max_position_step_px: float = setting(
        default=0.5, doc="Largest position change of a view in one iteration.", unit="px", min=0, max=100,
        exclusive="min",
    )  # fmt: skip
    seed: int = setting(
        default=0,
        doc="Seed of the random view order and of added probe modes.",
        min=0,
        max=2**32 - 1,
    )
    device_memory_bytes: int | None = setting(
        default=None, doc="Most bytes of per-frame arrays kept on the device; above it they stay on the "
        "host and move block by block. Absent: 70 % of the GPU's free memory on CuPy, no "
        "limit on NumPy. 0 forces the block path.", kind="int", unit="bytes", min=0,
        max=2**50, optional=True,
    )  # fmt: skip


@settings
class RpieOptions(SolverOptions):
    """Options of :class:`RPIE` (mini-batch ePIE/rPIE)."""

    batch_size: int = setting(
        default=16, doc="Views updated together. 1 is classic sequential ePIE; larger batches vectorise "
        "(and suit the GPU) at a small cost in convergence per pass.", min=1, max=MAX_BATCH,
    )  # fmt: skip
    alpha: float = setting(
        default=0.1, doc="rPIE regularisation of the object step: the denominator is "
        "(1 − α)·Σ|P|² + α·max Σ|P|²; 1 gives ePIE's step.", min=0, max=1, exclusive="min",
    )  # fmt: skip
    beta: float = setting(
        default=0.5, doc="The same for the probe step.", min=0, max=1, exclusive="min"
    )


@settings
class RaarOptions(SolverOptions):
    """Options of :class:`RAAR`."""

    beta: float = setting(
        default=0.8, doc="Relaxation: ψ ← β(ψ + P_F R_O ψ − P_O ψ) + (1 − β) P_O ψ. 1 is the difference "
        "map; 0.75–0.9 is steadier with noisy data.", min=0, max=1, exclusive="min",
    )  # fmt: skip
    block_size: int = setting(
        default=128, doc="Views processed together (memory, not convergence: the algorithm is global).",
        min=1, max=MAX_BATCH,
    )  # fmt: skip
    overlap_iterations: int = setting(
        default=1, doc="Alternating object/probe updates per overlap projection.", min=1, max=100
    )
    regularization: float = setting(
        default=1e-3, doc="Added to the object and probe denominators, relative to their maximum, so weakly "
        "lit pixels do not blow up.", min=0, max=1, exclusive="min",
    )  # fmt: skip
    fourier_relax: float = setting(
        default=0.05, doc="Fourier relaxation (PtyPy's fourier_relax_factor): a frame whose model already "
        "matches its counts to within this fraction of the brightest frame's amplitude is only "
        "pulled that far, not projected (the projection otherwise fits the noise and the "
        "iteration drifts). 0 projects always.", min=0, max=1,
    )  # fmt: skip
    probe_support: float = setting(
        default=0.4, doc="Radius of the probe's support as a fraction of the frame side (the probe is set "
        "to zero outside it after each update; a projection algorithm's probe otherwise drifts "
        "into the frame's corners). 0: none.", min=0, max=0.75,
    )  # fmt: skip


@settings
class DmOptions(RaarOptions):
    """Options of :class:`DifferenceMap`: RAAR's, with ``beta`` 1 (the plain difference map)."""

    beta: float = setting(
        default=1.0, doc="The difference map's own relaxation; 1 is Thibault et al.'s form.", min=0,
        max=1, exclusive="min",
    )  # fmt: skip


@settings
class LsqmlOptions(SolverOptions):
    """Options of :class:`LSQML`."""

    noise: str = setting(
        default="gaussian", doc="Noise model of the likelihood: Gaussian on amplitudes (the modulus "
        "constraint) or Poisson on counts (a step along the likelihood's gradient, its length "
        "found per view by Newton's method).", choices=("gaussian", "poisson"),
    )  # fmt: skip
    batch_size: int = setting(
        default=64, doc="Views per update; LSQ-ML's directions are averaged over a batch.", min=1,
        max=MAX_BATCH,
    )  # fmt: skip
    regularization: float = setting(
        default=0.05, doc="Preconditioner regularisation δ relative to the maximum illumination (object) "
        "or object power (probe).", min=0, max=1, exclusive="min",
    )  # fmt: skip
    max_step: float = setting(
        default=2.0, doc="Largest step length along a direction (steps are solved per view and averaged "
        "over the batch).", min=0, max=10, exclusive="min",
    )  # fmt: skip


def options_doc(options_type: type) -> dict[str, str]:
    """Option → its documentation, from the declarations."""
    return {p.name: p.doc for p in declared(options_type)}
