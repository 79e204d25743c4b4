"""The simulated FCCD: an Ophyd device whose frames come from core.sim.

The physics (sample, probe, detector noise) is :mod:`bluesky_ptycho.core.sim`;
the file writing is :mod:`bluesky_ptycho.io.frames`; this module is glue. A
frame depends on where the stage is and whether the shutter is open (a dark
frame when it is closed). Frames go to HDF5, one file per staging, and the
documents point to them with StreamResource/StreamDatum.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from bluesky_ptycho.core import fccd as fccd_geom
from bluesky_ptycho.core.geometry import Beamstop, Geometry, ZonePlate
from bluesky_ptycho.core.sim import FCCDDefects, FCCDNoiseModel, SimulatedSample
from bluesky_ptycho.devices.stage import SampleStage, Shutter, position_m
from bluesky_ptycho.io.frames import MIMETYPE, FrameFileWriter, raw_frames_key
from bluesky_ptycho.threads import Worker

DEFAULT_DEFECTS = FCCDDefects()


#: what :attr:`SimFCCD.faults` can plant: no beam (a beam dump), lost packets over the
#: pattern, a saturated spot, a frame taken away from where the stage said
FAULTS = ("no_beam", "corrupt", "saturate", "misplaced")


class SimFCCD(Device):
    """Simulated LBNL fast CCD producing raw ``(1152, 1940)`` uint16 frames.

    Parameters
    ----------
    stage : SampleStage
        Where the sample is; read at each trigger.
    shutter : Shutter
        Dark frames while it is closed.
    write_path : path-like
        Folder for the HDF5 frame files (one per staging).
    sample : SimulatedSample, optional
        The simulated truth; built from the configuration when omitted.
    seed : int
        Seed of the photon and read noise.
    defects : FCCDDefects or None
        Defects the simulated camera plants in its raw frames (pickup
        ripple, column offsets, hot and dead pixels, a noisy channel, dropped
        packets); None for an ideal camera.
    beam_center : (int, int)
        Detector image pixel (row, col) where the direct beam lands; off the
        detector centre, as on a real instrument.
    """

    # configuration a real FCCD exposes (kind="config": in the descriptor)
    acquire_time = Cpt(Signal, value=0.05, kind="config", metadata={"units": "s"})
    acquire_period = Cpt(Signal, value=0.0, kind="config", metadata={"units": "s"})
    gain_mode = Cpt(Signal, value="auto", kind="config")
    adu_per_photon = Cpt(Signal, value=36.5, kind="config")
    pixel_size = Cpt(Signal, value=30e-6, kind="config", metadata={"units": "m"})
    distance = Cpt(Signal, value=0.080, kind="config", metadata={"units": "m"})
    energy = Cpt(Signal, value=800.0, kind="config", metadata={"units": "eV"})
    # the semi-transparent beamstop in front of the detector (measured once per setup)
    beamstop_row = Cpt(Signal, value=975.0, kind="config", metadata={"units": "px"})
    beamstop_col = Cpt(Signal, value=463.0, kind="config", metadata={"units": "px"})
    beamstop_radius = Cpt(Signal, value=40.0, kind="config", metadata={"units": "px"})
    beamstop_transmission = Cpt(Signal, value=0.05, kind="config")
    # simulation knob: photons per second reaching the sample
    sim_flux = Cpt(Signal, value=2e7, kind="config", metadata={"units": "photons/s"})
    # per-frame readings (like an area detector's stats plugin)
    frame_number = Cpt(Signal, value=-1, kind="normal")
    total_adu = Cpt(Signal, value=0.0, kind="normal")

    IMAGE_KEY_SUFFIX = "image"

    def __init__(
        self,
        *args: Any,
        stage: SampleStage,
        shutter: Shutter,
        write_path: str | Path,
        sample: SimulatedSample | None = None,
        seed: int = 0,
        defects: FCCDDefects | None = DEFAULT_DEFECTS,
        beam_center: tuple[int, int] = (972, 466),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.defects = defects
        self.beam_center = (int(beam_center[0]), int(beam_center[1]))
        #: faults to plant, by scan point (the stage's ``point``): the first frame taken there
        #: gets it, a frame taken there again is clean. Kinds: :data:`FAULTS`.
        self.faults: dict[int, str] = {}
        self.stage_device = stage
        self.shutter = shutter
        self.write_path = Path(write_path)
        self._sample = sample
        self._noise: FCCDNoiseModel | None = None
        self._rng = np.random.default_rng(seed)
        self._writer: FrameFileWriter | None = None
        self._compose_datum: Any = None
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._frame_counter = itertools.count()
        self._lock = threading.Lock()
        self._exposures: Worker | None = None

    # -- configuration ----------------------------------------------------
    @property
    def image_key(self) -> str:
        """The data key of the frames in documents (``<name>_image``)."""
        return f"{self.name}_{self.IMAGE_KEY_SUFFIX}"

    def geometry(self, crop_px: int = 512, frame_px: int = 128) -> Geometry:
        """The geometry this detector's configuration implies."""
        return Geometry(
            energy_ev=float(self.energy.get()),
            distance_m=float(self.distance.get()),
            pixel_size_m=float(self.pixel_size.get()),
            crop_px=crop_px,
            frame_px=frame_px,
        )

    def beamstop(self) -> Beamstop:
        """The beamstop this detector's configuration describes."""
        return Beamstop(
            (float(self.beamstop_row.get()), float(self.beamstop_col.get())),
            float(self.beamstop_radius.get()),
            float(self.beamstop_transmission.get()),
        )

    def _noise_model(self) -> FCCDNoiseModel:
        return FCCDNoiseModel.for_energy(
            float(self.energy.get()), defects=self.defects, beamstop=self.beamstop()
        )

    @property
    def sample(self) -> SimulatedSample:
        """The simulated truth (built on first use, rebuilt if the geometry changed)."""
        g = self.geometry()
        if self._sample is None or self._sample.geometry != g:
            zp = self._sample.zone_plate if self._sample is not None else ZonePlate()
            self._sample = SimulatedSample(geometry=g, zone_plate=zp)
        return self._sample

    def zone_plate(self) -> ZonePlate:
        """The zone plate focusing the beam (the simulated one)."""
        return self.sample.zone_plate

    def check_configured(self) -> None:
        """Raise ``ValueError`` naming what is not configured (called by plans before a run)."""
        problems = []
        t = self.acquire_time.get()
        if not (isinstance(t, int | float) and t > 0):
            problems.append(f"acquire_time={t!r} must be > 0 s: fccd.acquire_time.put(0.05)")
        for sig in (self.energy, self.distance, self.pixel_size, self.adu_per_photon):
            v = sig.get()
            if not (isinstance(v, int | float) and v > 0):
                problems.append(f"{sig.attr_name}={v!r} must be > 0: fccd.{sig.attr_name}.put(...)")
        if not str(self.write_path):
            problems.append("write_path is empty: give SimFCCD(write_path=FOLDER)")
        if problems:
            raise ValueError(f"detector {self.name!r} is not configured: " + "; ".join(problems))

    # -- staging: one HDF5 file per staging ------------------------------------
    def stage(self) -> list[object]:
        self.check_configured()
        self._noise = self._noise_model()
        self.adu_per_photon.put(self._noise.adu_per_photon)
        path = self.write_path / f"{uuid.uuid4()}.h5"
        self._writer = FrameFileWriter(path, fccd_geom.RAW_SHAPE, "uint16")
        bundle = compose_stream_resource(
            mimetype=MIMETYPE,
            uri=f"file://localhost{self._writer.path}",
            data_key=self.image_key,
            parameters=self._writer.stream_resource_parameters(),
        )
        # run_start is filled in by the RunEngine's bundler
        doc = dict(bundle.stream_resource_doc)
        doc.pop("run_start", None)
        self._asset_docs.append(("stream_resource", doc))
        self._compose_datum = bundle.compose_stream_datum
        # exposures run on a thread of the device's own, one after another, while it is staged
        self._exposures = Worker(f"{self.name}-acquire", lambda job: job())
        return super().stage()

    def unstage(self) -> list[object]:
        if self._exposures is not None:
            self._exposures.close()  # after the exposures already asked for
            self._exposures.join(60)
            self._exposures = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._asset_docs.clear()
        return super().unstage()

    # -- acquisition ---------------------------------------------------------
    def trigger(self) -> DeviceStatus:
        if self._writer is None or self._exposures is None:
            raise RuntimeError(f"detector {self.name!r} must be staged before it is triggered")
        status = DeviceStatus(self)
        position = (position_m(self.stage_device.x), position_m(self.stage_device.y))
        shutter_open = self.shutter.is_open
        point = getattr(self.stage_device, "point", None)
        fault = (
            self.faults.pop(int(point.get()), None) if shutter_open and point is not None else None
        )
        t_exp = float(self.acquire_time.get())
        flux = float(self.sim_flux.get())

        def acquire() -> None:
            t0 = time.monotonic()
            try:
                frame = self.simulate_frame(position, shutter_open, flux * t_exp, fault)
                with self._lock:
                    assert self._writer is not None
                    i = self._writer.append(frame)
                    self._asset_docs.append(
                        (
                            "stream_datum",
                            dict(self._compose_datum(indices={"start": i, "stop": i + 1})),
                        )
                    )
                self.frame_number.put(next(self._frame_counter))
                self.total_adu.put(float(frame.sum(dtype=np.int64)))
                remaining = t_exp - (time.monotonic() - t0)
                if remaining > 0:
                    time.sleep(remaining)
            except Exception as err:
                status.set_exception(err)
            else:
                status.set_finished()

        self._exposures.put(acquire)
        return status

    def simulate_frame(
        self,
        position: tuple[float, float],
        shutter_open: bool,
        photons: float,
        fault: str | None = None,
    ) -> np.ndarray:
        """One raw frame at a stage position (x, y) in m; a dark frame when the shutter is closed.

        *fault* plants one of :data:`FAULTS` in it (see :attr:`faults`).
        """
        if self._noise is None:
            self._noise = self._noise_model()
        if not shutter_open:
            return self._noise.raw_frame(self._rng)
        if fault == "no_beam":
            photons = 0.0
        elif fault == "misplaced":  # the stage was not where it said
            position = (position[0] + 400e-9, position[1] - 300e-9)
        pattern = self.sample.intensity(position, photons)
        frame = self._noise.raw_frame(self._rng, pattern, self.beam_center)
        if fault in ("corrupt", "saturate"):  # lost packets / a saturated spot on the pattern
            spot = np.zeros(fccd_geom.raw_to_image(frame).shape, bool)
            r, c = self.beam_center
            h = 40 if fault == "corrupt" else 6
            spot[r - h : r + h, c - h : c + h] = True
            frame[fccd_geom.image_to_raw(spot, fill=False)] = (
                0 if fault == "corrupt" else np.iinfo(np.uint16).max
            )
        return frame

    # -- documents -------------------------------------------------------------
    def describe(self) -> dict[str, dict]:
        d = super().describe()
        d[self.image_key] = raw_frames_key(f"sim:{self.name}", fccd_geom.RAW_SHAPE)
        return d

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        with self._lock:
            items = list(self._asset_docs)
            self._asset_docs.clear()
        yield from items
