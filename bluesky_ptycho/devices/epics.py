"""The FCCD, the sample stage and the shutter over EPICS (ophyd v1, Channel Access).

Drop-in partners of the simulated devices: :func:`~bluesky_ptycho.acquisition.plans.ptycho_scan`
drives them unchanged (docs/decisions/0007-epics-devices.md).

- :class:`EpicsFCCD` — an areaDetector camera driver (``cam1:``) and its HDF5
  file plugin (``HDF1:``), built from ophyd's areaDetector building blocks
  (``ADBase``, ``EpicsSignalWithRBV``). One file per staging, written by the
  plugin in SWMR mode; the device emits StreamResource/StreamDatum documents
  (``application/x-hdf5``, ``/entry/data/data``) the stages, the catalog and
  ``raw2cxi`` read.
- :class:`EpicsSampleStage` — two motor records (ophyd's ``EpicsMotor``): the
  readback (RBV, in the motor's EGU, µm) is read with every frame.
- :class:`EpicsShutter` — a binary PV and its ``_RBV`` readback.

Default PVs: ``PTYCHO:FCCD:`` (``cam1:``, ``HDF1:``), ``PTYCHO:STAGE:X``,
``PTYCHO:STAGE:Y``, ``PTYCHO:SHUTTER``; :func:`epics_devices` makes all three
from a configuration. ``bluesky-ptycho ioc`` serves them for tests and demos.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignalRO, Signal
from ophyd import FormattedComponent as FCpt
from ophyd.areadetector.base import ADBase, EpicsSignalWithRBV
from ophyd.positioner import PositionerBase
from ophyd.signal import ArrayAttributeSignal
from ophyd.status import DeviceStatus, Status
from ophyd.utils.errors import DisconnectedError, LimitError

from bluesky_ptycho.core import fccd as fccd_geom
from bluesky_ptycho.core.geometry import Beamstop, Geometry, ZonePlate
from bluesky_ptycho.devices.connect import require_connected
from bluesky_ptycho.devices.pvs import FCCD_PREFIX, SHUTTER_PV, STAGE_X_PV, STAGE_Y_PV
from bluesky_ptycho.io.frames import DATASET, MIMETYPE, raw_frames_key

log = logging.getLogger(__name__)


def _rbv(suffix: str, kind: str = "config", **kw: Any) -> Cpt:
    return Cpt(EpicsSignalWithRBV, suffix, kind=kind, **kw)


class FCCDCam(ADBase):
    """The FCCD's areaDetector camera driver (``cam1:``): the PVs a step scan uses."""

    # what is read and what is configuration follows each component's kind
    _default_read_attrs = None
    _default_configuration_attrs = None
    # ADBase lists its configuration's names as an array of strings: not a value for documents
    configuration_names = Cpt(ArrayAttributeSignal, attr="_configuration_names", kind="omitted")

    acquire = _rbv("Acquire", kind="omitted", string=True)
    acquire_time = _rbv("AcquireTime")
    acquire_period = _rbv("AcquirePeriod")
    num_images = _rbv("NumImages", kind="omitted")
    image_mode = _rbv("ImageMode", kind="omitted", string=True)
    trigger_mode = _rbv("TriggerMode", string=True)
    detector_state = Cpt(EpicsSignalRO, "DetectorState_RBV", kind="omitted", string=True)
    array_counter = _rbv("ArrayCounter", kind="normal")
    # the FCCD's own settings (the simulated device's configuration)
    gain_mode = _rbv("GainMode", string=True)
    adu_per_photon = Cpt(EpicsSignalRO, "ADUPerPhoton_RBV", kind="config")
    pixel_size = Cpt(EpicsSignalRO, "PixelSize_RBV", kind="config")
    energy = _rbv("Energy")
    distance = _rbv("Distance")
    beamstop_row = _rbv("BeamstopRow")
    beamstop_col = _rbv("BeamstopCol")
    beamstop_radius = _rbv("BeamstopRadius")
    beamstop_transmission = _rbv("BeamstopTransmission")
    sim_flux = _rbv("SimFlux")


class FCCDHDF5(ADBase):
    """The FCCD's areaDetector HDF5 file plugin (``HDF1:``)."""

    _default_read_attrs = None
    _default_configuration_attrs = None
    configuration_names = Cpt(ArrayAttributeSignal, attr="_configuration_names", kind="omitted")

    file_path = _rbv("FilePath", kind="omitted", string=True)
    file_name = _rbv("FileName", kind="omitted", string=True)
    file_template = _rbv("FileTemplate", kind="omitted", string=True)
    file_number = _rbv("FileNumber", kind="omitted")
    file_write_mode = _rbv("FileWriteMode", kind="omitted", string=True)
    capture = _rbv("Capture", kind="omitted", string=True)
    num_capture = _rbv("NumCapture", kind="omitted")
    num_captured = Cpt(EpicsSignalRO, "NumCaptured_RBV", kind="omitted")
    full_file_name = Cpt(EpicsSignalRO, "FullFileName_RBV", kind="omitted", string=True)
    swmr_mode = _rbv("SWMRMode", kind="omitted")
    write_status = Cpt(EpicsSignalRO, "WriteStatus", kind="omitted", string=True)
    write_message = Cpt(EpicsSignalRO, "WriteMessage", kind="omitted", string=True)


class EpicsFCCD(Device):
    """The FCCD behind EPICS areaDetector: camera ``cam1:`` and HDF5 plugin ``HDF1:``.

    Each :meth:`trigger` acquires one image (ImageMode Single, internal
    trigger) and completes when the camera's ArrayCounter_RBV counts it; the
    HDF5 plugin captures the images of one staging into one file (Stream
    mode, SWMR), which a StreamResource names, one StreamDatum per image.

    Parameters
    ----------
    prefix : str
        ``PTYCHO:FCCD:`` by default.
    write_path : path-like
        Folder the IOC writes the files to (HDF1:FilePath).
    read_path : path-like, optional
        The same folder as this computer sees it (where the documents point);
        *write_path* when omitted.
    trigger_timeout : float
        Seconds past the exposure (AcquireTime + AcquirePeriod) an image may
        take before the trigger fails, naming the device.
    zone_plate : ZonePlate, optional
        The optics focusing the beam (for the reconstruction's first probe).
    """

    cam = Cpt(FCCDCam, "cam1:")
    hdf = Cpt(FCCDHDF5, "HDF1:")

    IMAGE_KEY_SUFFIX = "image"

    def __init__(
        self,
        prefix: str = FCCD_PREFIX,
        *,
        name: str,
        write_path: str | Path,
        read_path: str | Path | None = None,
        trigger_timeout: float = 10.0,
        zone_plate: ZonePlate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.write_path = Path(write_path)
        self.read_path = Path(read_path) if read_path is not None else None
        self.trigger_timeout = float(trigger_timeout)
        self._zone_plate = zone_plate or ZonePlate()
        self._compose_datum: Any = None
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._lock = threading.Lock()
        self._frames = 0  # images of this staging (their indices in the file)
        self._counter = 0  # the camera's ArrayCounter_RBV
        self.file: Path | None = None  # the file of the current staging, as read here

    # -- what ptycho_scan and the stages use (the simulated device's interface) -----------
    acquire_time = property(lambda self: self.cam.acquire_time)
    acquire_period = property(lambda self: self.cam.acquire_period)
    gain_mode = property(lambda self: self.cam.gain_mode)
    adu_per_photon = property(lambda self: self.cam.adu_per_photon)
    pixel_size = property(lambda self: self.cam.pixel_size)
    distance = property(lambda self: self.cam.distance)
    energy = property(lambda self: self.cam.energy)
    beamstop_row = property(lambda self: self.cam.beamstop_row)
    beamstop_col = property(lambda self: self.cam.beamstop_col)
    beamstop_radius = property(lambda self: self.cam.beamstop_radius)
    beamstop_transmission = property(lambda self: self.cam.beamstop_transmission)
    sim_flux = property(lambda self: self.cam.sim_flux)
    frame_number = property(lambda self: self.cam.array_counter)

    @property
    def image_key(self) -> str:
        """The data key of the frames in documents (``<name>_image``)."""
        return f"{self.name}_{self.IMAGE_KEY_SUFFIX}"

    def geometry(self, crop_px: int = 512, frame_px: int = 128) -> Geometry:
        """The geometry the camera's settings imply."""
        return Geometry(
            energy_ev=float(self.cam.energy.get()),
            distance_m=float(self.cam.distance.get()),
            pixel_size_m=float(self.cam.pixel_size.get()),
            crop_px=crop_px,
            frame_px=frame_px,
        )

    def beamstop(self) -> Beamstop:
        """The beamstop the camera's settings describe."""
        c = self.cam
        return Beamstop(
            (float(c.beamstop_row.get()), float(c.beamstop_col.get())),
            float(c.beamstop_radius.get()),
            float(c.beamstop_transmission.get()),
        )

    def zone_plate(self) -> ZonePlate:
        """The zone plate focusing the beam (given when the device was made)."""
        return self._zone_plate

    def check_configured(self) -> None:
        """Raise naming what is unreachable or not configured (plans call it before a run)."""
        require_connected(self)
        problems = []
        t = self.cam.acquire_time.get()
        if not t > 0:
            problems.append(f"{self.cam.acquire_time.pvname}={t!r} must be > 0 s")
        for sig in (self.cam.energy, self.cam.distance, self.cam.pixel_size):
            v = sig.get()
            if not v > 0:
                problems.append(f"{sig.pvname}={v!r} must be > 0")
        if not str(self.write_path):
            problems.append("write_path is empty: give EpicsFCCD(write_path=FOLDER)")
        if problems:
            raise ValueError(f"detector {self.name!r} is not configured: " + "; ".join(problems))

    # -- staging: one file per staging --------------------------------------------------------
    def stage(self) -> list[object]:
        self.check_configured()
        if self.cam.acquire.get() != "Done":
            self._put(self.cam.acquire, "Done")
        settings = [
            (self.cam.image_mode, "Single"),
            (self.cam.trigger_mode, "Internal"),
            (self.cam.num_images, 1),
            (self.hdf.file_path, str(self.write_path).rstrip("/") + "/"),
            (self.hdf.file_name, uuid.uuid4().hex),
            (self.hdf.file_template, "%s%s_%6.6d.h5"),
            (self.hdf.file_number, 0),
            (self.hdf.file_write_mode, "Stream"),
            (self.hdf.num_capture, 0),
            (self.hdf.swmr_mode, 1),
            (self.hdf.capture, "Capture"),
        ]
        for sig, value in settings:
            self._put(sig, value)
        name = self._full_file_name()
        staged = super().stage()
        self.file = (self.read_path or self.write_path) / Path(name).name
        self._frames = 0
        self._counter = int(self.cam.array_counter.get())
        bundle = compose_stream_resource(
            mimetype=MIMETYPE,
            uri=f"file://localhost{self.file}",
            data_key=self.image_key,
            parameters={
                "dataset": DATASET,
                "chunk_shape": [1, *fccd_geom.RAW_SHAPE],
                "join_method": "stack",
                "swmr": True,
            },
        )
        doc = dict(bundle.stream_resource_doc)
        doc.pop("run_start", None)  # the RunEngine's bundler fills it in
        with self._lock:
            self._asset_docs.append(("stream_resource", doc))
        self._compose_datum = bundle.compose_stream_datum
        return staged

    def _put(self, sig: Any, value: Any, timeout: float = 10.0) -> None:
        """Set *sig* and wait for its readback, or raise naming the PV."""
        try:
            sig.set(value, timeout=timeout).wait(timeout + 1)
        except Exception as err:
            said = ""
            if sig.parent is self.hdf and self.hdf.write_message.get():
                said = f"; the HDF5 plugin says: {self.hdf.write_message.get()}"
            raise TimeoutError(
                f"detector {self.name!r}: {sig.pvname} did not take {value!r} within "
                f"{timeout:g} s (readback {sig.get()!r}): {type(err).__name__}{said}"
            ) from None

    def _full_file_name(self, timeout: float = 5.0) -> str:
        """The file the plugin opened (FullFileName_RBV), refusing an error it reports."""
        deadline = time.monotonic() + timeout
        while True:
            name = str(self.hdf.full_file_name.get(use_monitor=False))
            status = self.hdf.write_status.get(use_monitor=False)
            if status not in ("Write OK", 0):
                log.warning(
                    "%s: the HDF5 plugin reports %r (%s): frames of %s will be missing",
                    self.name,
                    status,
                    self.hdf.write_message.get(),
                    name,
                )
            if name.startswith(str(self.write_path).rstrip("/") + "/"):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"detector {self.name!r}: {self.hdf.full_file_name.pvname} = {name!r} "
                    f"after {timeout:g} s, not a file in {self.write_path}; is the HDF5 plugin "
                    "enabled and the folder writable by the IOC?"
                )
            time.sleep(0.05)

    def unstage(self) -> list[object]:
        try:
            if self.cam.connected and self.cam.acquire.get() != "Done":
                self.cam.acquire.put("Done", wait=False)  # an acquisition that never ended
            if self.hdf.connected and self.hdf.capture.get() != "Done":
                self.hdf.capture.set("Done").wait(30)  # the plugin writes what it still holds
            if self.hdf.connected and self.hdf.write_status.get() not in ("Write OK", 0):
                log.warning(
                    "%s: the HDF5 plugin reported %s for %s: its missing frames are flagged",
                    self.name,
                    self.hdf.write_message.get(),
                    self.file,
                )
        except Exception as err:
            log.warning(
                "%s: could not close the HDF5 capture (%s: %s); the frames taken so far stay in %s",
                self.name,
                type(err).__name__,
                err,
                self.file,
            )
        self._compose_datum = None
        with self._lock:
            self._asset_docs.clear()
        try:
            return super().unstage()
        except Exception as err:
            log.warning("%s: could not restore its settings: %s", self.name, err)
            return [self]

    # -- acquisition ----------------------------------------------------------------------------
    def trigger(self) -> DeviceStatus:
        if self._compose_datum is None:
            raise RuntimeError(f"detector {self.name!r} must be staged before it is triggered")
        status = DeviceStatus(self)
        target = self._counter + 1
        try:
            timeout = (
                float(self.cam.acquire_time.get())
                + max(float(self.cam.acquire_period.get()), 0.0)
                + self.trigger_timeout
            )
        except (OSError, DisconnectedError, TimeoutError) as err:
            raise ConnectionError(
                f"detector {self.name!r} ({self.prefix}) lost its IOC before an acquisition "
                f"({type(err).__name__}: {err}); the frames taken so far are in {self.file}"
            ) from err

        def counted(value: Any = None, **_: Any) -> None:
            if status.done or value is None or int(value) < target:
                return
            with self._lock:
                i = self._frames
                self._frames += 1
                self._counter = int(value)
                self._asset_docs.append(
                    ("stream_datum", dict(self._compose_datum(indices={"start": i, "stop": i + 1})))
                )
            status.set_finished()

        def state(value: Any = None, **_: Any) -> None:
            if value == "Error" and not status.done:
                status.set_exception(
                    RuntimeError(
                        f"detector {self.name!r}: {self.cam.detector_state.pvname} went to "
                        "Error during the acquisition; see the IOC's log"
                    )
                )

        def expire() -> None:
            if status.done:
                return
            if not self.cam.acquire.connected:
                why = f"lost its IOC ({self.cam.acquire.pvname} disconnected)"
            else:
                why = f"DetectorState_RBV is {self.cam.detector_state.get()!r}"
            status.set_exception(
                TimeoutError(
                    f"detector {self.name!r} ({self.prefix}) did not finish an image within "
                    f"{timeout:.1f} s (AcquireTime + AcquirePeriod + trigger_timeout): {why}; "
                    "check the camera and its IOC, or raise "
                    f"{self.name}.trigger_timeout for a slower detector"
                )
            )

        cid = self.cam.array_counter.subscribe(counted, run=False)
        sid = self.cam.detector_state.subscribe(state, run=False)
        timer = threading.Timer(timeout, expire)
        timer.daemon = True

        def done(_: Any) -> None:
            timer.cancel()
            self.cam.array_counter.unsubscribe(cid)
            self.cam.detector_state.unsubscribe(sid)

        status.add_callback(done)
        timer.start()
        try:
            self.cam.acquire.put("Acquire", wait=False)
        except Exception as err:
            status.set_exception(
                ConnectionError(
                    f"detector {self.name!r}: could not start an acquisition "
                    f"({self.cam.acquire.pvname}): {err}"
                )
            )
        return status

    def stop(self, *, success: bool = False) -> None:
        try:
            if self.cam.acquire.connected:
                self.cam.acquire.put("Done", wait=False)
        finally:
            super().stop(success=success)

    # -- documents ------------------------------------------------------------------------------
    def describe(self) -> dict[str, dict]:
        d = super().describe()
        d[self.image_key] = raw_frames_key(
            f"PV:{self.hdf.full_file_name.pvname}", fccd_geom.RAW_SHAPE
        )
        return d

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        with self._lock:
            items = list(self._asset_docs)
            self._asset_docs.clear()
        yield from items


class StageMotor(EpicsMotor):
    """ophyd's ``EpicsMotor`` whose failed moves say why: a limit switch (where it stopped
    and where it was going), an alarm, or a lost IOC; and whose readback and setpoint
    describe themselves with the record's EGU (``units``) and PREC (``precision``), read
    from those fields, so BestEffortCallback shows µm to the record's decimals even where
    an IOC's RBV channel leaves its own units and precision unset."""

    motor_prec = Cpt(EpicsSignalRO, ".PREC", kind="config")

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        units, precision = str(self.egu), int(self.motor_prec.get())
        for key in (self.user_readback.name, self.user_setpoint.name):
            if key in desc:
                desc[key]["units"] = units
                desc[key]["precision"] = precision
        return desc

    def move(self, position: float, wait: bool = True, **kwargs: Any) -> Status:
        try:
            inner = super().move(position, wait=False, **kwargs)
        except (OSError, DisconnectedError, TimeoutError) as err:
            raise ConnectionError(
                f"{self.name} ({self.prefix}) could not be sent to {position:.4g}: lost its IOC "
                f"({type(err).__name__}: {err}); is the IOC running?"
            ) from err
        outer = Status(obj=self)

        def done(st: Any) -> None:
            if st.success:
                outer.set_finished()
            else:
                outer.set_exception(self._why_failed(float(position), st))

        inner.add_callback(done)
        if wait:
            outer.wait()
        return outer

    def stop(self, *, success: bool = False) -> None:
        try:
            super().stop(success=success)
        except (OSError, DisconnectedError, TimeoutError) as err:
            log.warning(
                "%s (%s): could not send STOP, its IOC is gone: %s", self.name, self.prefix, err
            )
            PositionerBase.stop(self, success=success)

    def _why_failed(self, target: float, st: Any) -> Exception:
        egu = self.egu
        try:
            where = f"{self.user_readback.get():.4g} {egu}"
            high = self.high_limit_switch.get(use_monitor=False) == 1
            low = self.low_limit_switch.get(use_monitor=False) == 1
        except Exception as err:  # the IOC went away during the move
            return ConnectionError(
                f"{self.name} ({self.prefix}) stopped answering while moving to {target:.4g} "
                f"{egu}: {err}"
            )
        if high or low:
            return LimitError(
                f"{self.name} ({self.prefix}) stopped at its {'high' if high else 'low'} limit "
                f"switch at {where} on the way to {target:.4g} {egu}: the position is beyond the "
                "stage's travel; move the scan centre or shrink the scan (and set the soft "
                f"limits {self.prefix}.HLM/.LLM inside the travel, so scans are refused before "
                "they start)"
            )
        severity = self.user_readback.alarm_severity
        return RuntimeError(
            f"{self.name} ({self.prefix}) failed to reach {target:.4g} {egu} (at {where}; "
            f"alarm severity {severity}): {st.exception() or 'the motor record reported failure'}"
        )


class EpicsSampleStage(Device):
    """The sample stage as two EPICS motor records; positions in their EGU (µm).

    ``x`` and ``y`` are ophyd ``EpicsMotor``s (VAL, RBV, DMOV, STOP, HLM/LLM,
    EGU, …); ``point`` numbers the scan point, as on the simulated stage.
    """

    x = FCpt(StageMotor, "{x_pv}", kind="hinted")
    y = FCpt(StageMotor, "{y_pv}", kind="hinted")
    point = Cpt(Signal, value=-1, kind="normal")

    def __init__(
        self, prefix: str = "", *, x_pv: str = STAGE_X_PV, y_pv: str = STAGE_Y_PV, **kwargs: Any
    ) -> None:
        self.x_pv, self.y_pv = x_pv, y_pv
        super().__init__(prefix, **kwargs)


class EpicsShutter(Device):
    """The beam shutter: a binary PV (Closed/Open) and its readback ``<PV>_RBV``."""

    state = Cpt(EpicsSignalWithRBV, "", string=True, kind="normal")

    VALUES = ("open", "closed")
    _PV_VALUES: ClassVar[dict[str, str]] = {"open": "Open", "closed": "Closed"}

    def __init__(self, prefix: str = SHUTTER_PV, *, name: str, timeout: float = 5.0, **kw: Any):
        super().__init__(prefix, name=name, **kw)
        self.timeout = timeout

    def set(self, value: str) -> Status:
        if value not in self.VALUES:
            raise ValueError(f"shutter {self.name!r}: {value!r} is not one of {self.VALUES}")
        try:
            return self.state.set(self._PV_VALUES[value], timeout=self.timeout)
        except (OSError, DisconnectedError, TimeoutError) as err:
            raise ConnectionError(
                f"shutter {self.name!r} ({self.prefix}) could not be set {value}: lost its IOC "
                f"({type(err).__name__}: {err}); is the IOC running?"
            ) from err

    @property
    def is_open(self) -> bool:
        return self.state.get() == "Open"


def stop_searching() -> int:
    """Cancel the searches for PVs nobody answers (caproto's client repeats them, more and
    more slowly, for as long as the process lives); the number cancelled."""
    import ophyd

    if getattr(ophyd.cl, "name", "") != "caproto":
        return 0
    from caproto.threading.pyepics_compat import PV

    broadcaster = PV.default_context().broadcaster
    names = [entry[0] for entry in list(broadcaster.unanswered_searches.values())]
    if names:
        broadcaster.cancel(*names)
    return len(names)


def _close_channel_access() -> None:
    """Close the Channel Access circuits before the interpreter shuts down: caproto's client
    threads otherwise print errors at exit (callbacks scheduled on a closed executor, searches
    sent on a closed socket)."""
    import ophyd

    if getattr(ophyd.cl, "name", "") != "caproto":
        return
    try:
        from caproto.threading.pyepics_compat import PV

        stop_searching()
        PV.default_context().disconnect()
    except Exception as err:  # at exit: say it, never raise
        log.debug("closing Channel Access at exit: %s", err)


atexit.register(_close_channel_access)  # after ophyd's own clean-up is registered: runs first


def epics_devices(
    *,
    write_path: str | Path,
    fccd_prefix: str = FCCD_PREFIX,
    x_pv: str = STAGE_X_PV,
    y_pv: str = STAGE_Y_PV,
    shutter_pv: str = SHUTTER_PV,
    read_path: str | Path | None = None,
    names: tuple[str, str, str] = ("fccd", "stage", "shutter"),
    connect_timeout: float = 5.0,
) -> tuple[EpicsFCCD, EpicsSampleStage, EpicsShutter]:
    """(fccd, stage, shutter) over EPICS, connected.

    Raises ``ConnectionError`` naming the PVs that do not answer within
    *connect_timeout* s (before any run opens).
    """
    fccd = EpicsFCCD(fccd_prefix, name=names[0], write_path=write_path, read_path=read_path)
    stage = EpicsSampleStage(name=names[1], x_pv=x_pv, y_pv=y_pv)
    shutter = EpicsShutter(shutter_pv, name=names[2])
    require_connected(fccd, stage, shutter, timeout=connect_timeout)
    return fccd, stage, shutter


__all__ = [
    "FCCD_PREFIX",
    "SHUTTER_PV",
    "STAGE_X_PV",
    "STAGE_Y_PV",
    "EpicsFCCD",
    "EpicsSampleStage",
    "EpicsShutter",
    "epics_devices",
    "stop_searching",
]
