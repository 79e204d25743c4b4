"""Bluesky plans for ptychography. Plans only yield messages; the RunEngine does the I/O."""

import logging
from collections.abc import Generator
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import FailedStatus

from bluesky_ptycho.core.sim import scan_positions
from bluesky_ptycho.devices.connect import require_connected
from bluesky_ptycho.devices.stage import axis_scale_m, axis_units

PATTERNS = ("fermat", "raster")
log = logging.getLogger(__name__)


def ptycho_scan(
    detector: Readable,
    stage: Readable,
    shutter: Movable,
    *,
    num_points: int = 400,
    step: float = 100e-9,
    pattern: str = "fermat",
    num_darks: int = 25,
    center: tuple[float, float] = (0.0, 0.0),
    positions: list[tuple[float, float]] | None = None,
    energy: float | None = None,
    rescan: Any = None,
    rescan_every: int = 0,
    rescan_rounds: int = 2,
    rescan_batch: int = 8,
    rescan_wait: float = 30.0,
    md: dict | None = None,
) -> Generator[Any, Any, str]:
    """Take darks with the shutter closed, then diffraction frames over a scan.

    Streams: ``dark`` (``num_darks`` frames, shutter closed), ``primary``
    (one frame per scan point, shutter open, with the stage's x and y
    readbacks in the stage's units). The start document carries, under
    ``"ptycho"``, what the processing stages need: geometry (energy,
    distance, pixel size), the pattern, the planned positions (m), the
    numbers of points and darks, and the units of the readbacks
    (``x_units``, ``y_units``: the motors' EGU).

    Positions are given in metres here and converted to each motor's
    engineering units (its ``egu``: µm for the simulated stage and for the
    EPICS motors by default).

    Parameters
    ----------
    detector : SimFCCD or EpicsFCCD (areaDetector over EPICS)
        A device name through the queue server.
    stage : SampleStage or EpicsSampleStage (two motor records)
    shutter : Shutter or EpicsShutter
    num_points : int
        Scan points (ignored when *positions* is given).
    step : float
        Distance between neighbouring points, in m.
    pattern : {"fermat", "raster"}
    num_darks : int
        Dark frames before the scan (at least 1).
    center : (float, float)
        Scan centre (x, y) in m.
    positions : sequence of (x, y) in m, optional
        Explicit positions; overrides pattern, num_points and step.
    energy : float, optional
        Photon energy in eV; the detector's configured energy when omitted.
    rescan : RescanPlanner (or any bluesky-adaptive ``Optimizer``), optional
        Measure again, in this run, the points it suggests
        (:mod:`bluesky_ptycho.acquisition.rescan`): each round is bluesky-adaptive's
        ``optimize_step`` with :func:`~bluesky_ptycho.acquisition.rescan.rescan_acquire`.
        The new frames carry the point's number, so the live reconstruction
        replaces the bad ones.
    rescan_every : int
        Also ask for rescans after every this many points during the scan (0: only after it).
    rescan_rounds : int
        Rounds after the planned points (each waits up to *rescan_wait* s for
        the verdicts on the previous one; ends early when nothing is suggested).
    rescan_batch : int
        Points suggested per round at most.
    rescan_wait : float
        Seconds a round waits for the pipeline's verdicts.
    md : dict, optional
        Extra start-document metadata.

    Raises
    ------
    ValueError
        At call time, before any run opens, for a bad parameter; the message
        names the parameter, the value and the fix.
    """
    for what, dev, needs in (
        ("detector", detector, ("trigger", "geometry")),
        ("stage", stage, ("x", "y", "point")),
        ("shutter", shutter, ("set",)),
    ):
        if isinstance(dev, str) or not all(hasattr(dev, n) for n in needs):
            raise ValueError(
                f"ptycho_scan: {what}={dev!r} is not a {what} device (it needs {', '.join(needs)}); "
                "give the profile's fccd, stage and shutter (or their EPICS counterparts)"
            )
    require_connected(detector, stage, shutter)
    # What the metadata reads of the devices (ophyd's components, the detector's geometry) is
    # more than the protocols say: beyond them the devices are plain objects.
    det: Any = detector
    stg: Any = stage
    pts = _validated_positions(
        detector, stage, num_points, step, pattern, num_darks, center, positions, energy
    )
    det.check_configured()
    g = det.geometry()
    e = float(energy) if energy is not None else g.energy_ev
    ptycho_md = {
        "energy_ev": e,
        "distance_m": g.distance_m,
        "pixel_size_m": g.pixel_size_m,
        "crop_px": g.crop_px,
        "frame_px": g.frame_px,
        "adu_per_photon": float(det.adu_per_photon.get()),
        "acquire_time_s": float(det.acquire_time.get()),
        "pattern": "explicit" if positions is not None else pattern,
        "step_m": float(step),
        "num_points": len(pts),
        "num_darks": int(num_darks),
        "positions_m": pts.tolist(),
        "detector": det.name,
        "image_key": det.image_key,
        "x_key": stg.x.name,
        "y_key": stg.y.name,
        "x_units": axis_units(stg.x),
        "y_units": axis_units(stg.y),
        "point_key": stg.point.name,
        "zone_plate": det.zone_plate().as_dict(),
    }
    if hasattr(detector, "beamstop"):
        ptycho_md["beamstop"] = det.beamstop().as_dict()  # refuses a bad beamstop now
    _md = {
        "plan_name": "ptycho_scan",
        "plan_args": {
            "num_points": len(pts),
            "step": step,
            "pattern": ptycho_md["pattern"],
            "num_darks": num_darks,
        },
        "detectors": [det.name],
        "motors": [stg.x.name, stg.y.name],
        "num_points": len(pts),
        "num_intervals": len(pts) - 1,
        "hints": {"dimensions": [([stg.x.name], "primary"), ([stg.y.name], "primary")]},
        "ptycho": ptycho_md,
        **(md or {}),
    }
    if (
        not isinstance(rescan_every, int)
        or rescan_every < 0
        or rescan_rounds < 0
        or rescan_batch < 1
    ):
        raise ValueError(
            f"ptycho_scan: rescan_every={rescan_every!r} (>= 0), rescan_rounds={rescan_rounds!r} "
            f"(>= 0), rescan_batch={rescan_batch!r} (>= 1)"
        )
    if rescan is not None and not (
        callable(getattr(rescan, "suggest", None)) and callable(getattr(rescan, "ingest", None))
    ):
        raise ValueError(
            f"ptycho_scan: rescan={rescan!r} is not an Optimizer (it needs suggest and ingest); "
            "give a bluesky_ptycho.acquisition.rescan.RescanPlanner subscribed to the pipeline"
        )
    rescans = (rescan, rescan_every, rescan_rounds, rescan_batch, float(rescan_wait))
    return _scan(detector, stage, shutter, pts, int(num_darks), energy, _md, rescans)


# A plan, though not a generator function (it checks its parameters when called, before any
# run opens): bluesky.utils.is_plan, and so bluesky-queueserver, know it by this mark. The
# annotations above are what the queue server validates: device names for the Readable and
# Movable parameters, numbers and lists for the rest.
ptycho_scan._is_plan_ = True  # type: ignore[attr-defined]


def _measure(detector, stage, k, x, y):
    """Move to (x, y) in m (sent in the motors' units) and take one frame with the readbacks."""
    sx, sy = axis_scale_m(stage.x), axis_scale_m(stage.y)
    yield from bps.checkpoint()
    yield from bps.mv(stage.x, float(x) / sx, stage.y, float(y) / sy, stage.point, int(k))
    yield from bps.trigger_and_read([detector, stage.x, stage.y, stage.point], name="primary")


def _rescan_round(planner, detector, stage, batch):
    """One bluesky-adaptive optimize_step in the open run; the number of points measured."""
    from bluesky_adaptive.plans import optimize_step
    from bluesky_adaptive.protocols import OptimizationProblem

    from bluesky_ptycho.acquisition.rescan import rescan_acquire, rescan_outcomes

    problem = OptimizationProblem(
        optimizer=planner,
        actuators=[stage.x, stage.y],
        sensors=[detector],
        evaluation_function=rescan_outcomes,
        acquisition_plan=rescan_acquire,
    )
    _uid, suggestions, _outcomes = yield from optimize_step(problem, batch, point=stage.point)
    return len(suggestions)


def _wait_settled(planner, seconds):
    """Sleep (the RunEngine stays responsive) until the planner has its verdicts."""
    waited = 0.0
    while not getattr(planner, "settled", True) and waited < seconds:
        yield from bps.sleep(0.2)
        waited += 0.2


def _scan(detector, stage, shutter, pts, num_darks, energy, md, rescans):
    planner, every, rounds, batch, wait = rescans

    @bpp.run_decorator(md=md)
    def inner():
        try:
            return (yield from body())
        except FailedStatus as err:  # the run's stop document and the caller get the cause
            status = err.args[0] if err.args else None
            owner = getattr(status, "device", None) or getattr(status, "obj", None)
            raise RuntimeError(
                f"ptycho_scan: {getattr(owner, 'name', 'a device')}: {err.__cause__ or err}"
            ) from err

    def body():
        if energy is not None:
            yield from bps.mv(detector.energy, float(energy))
        yield from bps.mv(shutter, "closed")
        yield from bps.stage(detector)
        for _ in range(num_darks):
            yield from bps.trigger_and_read([detector], name="dark")
        yield from bps.unstage(detector)
        yield from bps.mv(shutter, "open")
        yield from bps.stage(detector)
        for k, (x, y) in enumerate(pts):
            yield from _measure(detector, stage, k, x, y)
            if planner is not None and every and (k + 1) % every == 0:
                yield from _rescan_round(planner, detector, stage, batch)
        for _ in range(rounds if planner is not None else 0):
            yield from _wait_settled(planner, wait)
            if not (yield from _rescan_round(planner, detector, stage, batch)):
                break
        yield from bps.unstage(detector)
        return md

    def cleanup():
        try:
            yield from bps.mv(shutter, "closed")
        except Exception as err:  # the IOC went away: say so, and still close the file
            log.warning("ptycho_scan: could not close the shutter %s: %s", shutter.name, err)
        yield from bps.unstage(detector)

    uid = yield from bpp.finalize_wrapper(inner(), cleanup())
    return uid


def _validated_positions(
    detector, stage, num_points, step, pattern, num_darks, center, positions, energy
) -> np.ndarray:
    if energy is not None and not (isinstance(energy, int | float) and energy > 0):
        raise ValueError(f"ptycho_scan: energy={energy!r} must be a positive photon energy in eV")
    if not isinstance(num_darks, int | np.integer) or num_darks < 1:
        raise ValueError(
            f"ptycho_scan: num_darks={num_darks!r} must be an integer >= 1 "
            "(the cleaning needs dark frames; 25 is usual)"
        )
    if positions is not None:
        pts = np.asarray(positions, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(
                f"ptycho_scan: positions has shape {pts.shape}; give at least one (x, y) pair in m"
            )
        if not np.isfinite(pts).all():
            raise ValueError("ptycho_scan: positions hold NaN or inf; give finite (x, y) in m")
    else:
        if not isinstance(num_points, int | np.integer) or num_points < 1:
            raise ValueError(f"ptycho_scan: num_points={num_points!r} must be an integer >= 1")
        if not (isinstance(step, int | float) and step > 0):
            raise ValueError(f"ptycho_scan: step={step!r} must be positive, in m (e.g. 100e-9)")
        if pattern not in PATTERNS:
            raise ValueError(
                f"ptycho_scan: pattern={pattern!r} is not known; use one of {PATTERNS}"
            )
        pts = scan_positions(pattern, int(num_points), float(step)) + np.asarray(center, float)
    for axis, col in ((stage.x, 0), (stage.y, 1)):
        lo, hi = axis.limits
        unit, scale = axis_units(axis), axis_scale_m(axis)
        if lo < hi:
            values = pts[:, col] / scale
            outside = (values < lo) | (values > hi)
            if outside.any():
                k = int(np.flatnonzero(outside)[0])
                raise ValueError(
                    f"ptycho_scan: position {k} has {axis.name}={values[k]:.4g} {unit}, outside "
                    f"the stage limits [{lo:.4g}, {hi:.4g}] {unit} ({int(outside.sum())} of "
                    f"{len(pts)} positions are); move the scan centre or shrink num_points/step"
                )
    return pts
