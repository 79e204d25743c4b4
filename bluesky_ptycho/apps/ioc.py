"""A soft IOC that behaves like the beamline: the FCCD, the sample stage and the shutter.

``bluesky-ptycho ioc`` serves, over Channel Access (caproto's asyncio server),
the PVs the EPICS devices of :mod:`bluesky_ptycho.devices.epics` use:

- ``PTYCHO:FCCD:cam1:`` — an areaDetector camera driver: Acquire, AcquireTime,
  AcquirePeriod, NumImages, ImageMode, TriggerMode, DetectorState_RBV,
  ArrayCounter_RBV, and the FCCD's own settings (gain mode, energy, detector
  distance, pixel size, beamstop, photon flux). Each image is a raw frame of
  the project's FCCD simulator (:mod:`bluesky_ptycho.core.sim`) at where the
  stage really is during the exposure, dark while the shutter is closed.
- ``PTYCHO:FCCD:HDF1:`` — an areaDetector HDF5 file plugin: FilePath,
  FileName, FileTemplate, FileNumber, FileWriteMode, Capture, NumCapture,
  NumCaptured_RBV, FullFileName_RBV, SWMRMode. One file per capture, frames at
  ``/entry/data/data`` (SWMR: flushed frame by frame), NDArrayUniqueId,
  NDArrayTimeStamp and the stage's position at exposure as NDAttributes.
- ``PTYCHO:STAGE:X``, ``PTYCHO:STAGE:Y`` — motor records (VAL, RBV, DMOV, MOVN,
  STOP, HLM/LLM, HLS/LLS, EGU ``um``, VELO …): moves at a finite speed, a
  settling error after each move and a slow jitter (the readback is the
  encoder: where the stage is, not where it was sent); puts outside the soft
  limits are refused; the travel ends at hardware limit switches.
- ``PTYCHO:SHUTTER`` (Closed/Open) and ``PTYCHO:SHUTTER_RBV``.

Faults a beamline meets, to test against: ``cam1:SimHang`` (an acquisition
never finishes), ``HDF1:SimWriteDelay`` (the file writer lags behind the
camera by that many seconds), ``HDF1:SimNoFile`` (the plugin writes nothing:
a full disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from bluesky_ptycho.core import fccd as fccd_geom
from bluesky_ptycho.core.geometry import Beamstop, Geometry, ZonePlate
from bluesky_ptycho.core.sim import FCCDDefects, FCCDNoiseModel, SimulatedSample
from bluesky_ptycho.core.units import metres_per_unit
from bluesky_ptycho.devices.pvs import FCCD_PREFIX, SHUTTER_PV, STAGE_X_PV, STAGE_Y_PV
from bluesky_ptycho.devices.stage import STAGE_PRECISION
from bluesky_ptycho.io.frames import FrameFileWriter


def free_ca_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Channel Access uses both), for an IOC
    of one's own beside any other on the machine."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 for Channel Access")


def local_ca_environment(port: int) -> dict[str, str]:
    """The EPICS variables that keep an IOC and its clients on 127.0.0.1:*port* (set them in
    both before either starts: a Channel Access client reads them once)."""
    return {
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


log = logging.getLogger("bluesky_ptycho.ioc")


#: NDAttributes written with each frame
FRAME_ATTRIBUTES = ("NDArrayUniqueId", "NDArrayTimeStamp", "SampleX", "SampleY")

#: the simulated camera's defects (as the simulated device has them)
DEFAULT_DEFECTS = FCCDDefects()

STRING = {"dtype": ChannelType.CHAR, "max_length": 256}


# -- the stage's physics ---------------------------------------------------------------


@dataclass
class MotorModel:
    """Where one stage axis really is (in its units, µm by default) over time.

    A move goes at *velocity* towards the target, then stops off it by a
    settling error (normal, σ = *settle_sigma*, kept until the next move);
    on top, a slow jitter (an Ornstein-Uhlenbeck process, σ = *jitter_sigma*,
    correlation time *jitter_tau* s) moves it all the time. *travel* is the
    hardware's range: a move past it stops on a limit switch.
    """

    velocity: float = 100.0
    settle_sigma: float = 0.02
    jitter_sigma: float = 0.01
    jitter_tau: float = 0.5
    settle_time: float = 0.02
    travel: tuple[float, float] = (-100.0, 100.0)
    seed: int = 0
    nominal: float = 0.0  # where the motion profile is (without errors)
    target: float = 0.0
    offset: float = 0.0  # settling error of the last move
    jitter: float = 0.0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def position(self) -> float:
        """Where the axis is now (the encoder's reading)."""
        return self.nominal + self.offset + self.jitter

    def step_jitter(self, dt: float) -> None:
        if self.jitter_sigma <= 0:
            self.jitter = 0.0
            return
        a = math.exp(-dt / self.jitter_tau)
        self.jitter = a * self.jitter + self.jitter_sigma * math.sqrt(1 - a * a) * float(
            self.rng.standard_normal()
        )

    def step_motion(self, dt: float) -> bool:
        """Advance a move by *dt* s; True once the target (or a travel end) is reached."""
        d = self.target - self.nominal
        reach = self.velocity * dt
        if abs(d) <= reach:
            self.nominal = self.target
            return True
        self.nominal += math.copysign(reach, d)
        lo, hi = self.travel
        if not lo <= self.nominal <= hi:
            self.nominal = min(max(self.nominal, lo), hi)
            return True
        return False

    def at_limit_switch(self) -> tuple[bool, bool]:
        lo, hi = self.travel
        return self.nominal <= lo and self.target < lo, self.nominal >= hi and self.target > hi


# caproto's pvproperty decorators (putter, startup) hand back the property, which takes its
# name again, as property.setter does; mypy allows that of property alone, hence the
# "type: ignore[no-redef]" on each.
class MotorAxis(PVGroup):
    """One motor record (caproto's motor record fields) driven by a :class:`MotorModel`."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=STAGE_PRECISION)

    def __init__(
        self, *args: Any, model: MotorModel, limits: tuple[float, float], egu: str, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        self.soft_limits = limits
        self.egu = egu
        self._new_move: asyncio.Event | None = None  # made on the server's loop, at startup

    @motor.putter  # type: ignore[no-redef]
    async def motor(self, instance: Any, value: float) -> float:
        lo, hi = self.soft_limits
        if not lo <= value <= hi:
            await self.motor.field_inst.limit_violation.write(1)
            raise ValueError(
                f"{self.prefix}: {value} {self.egu} is outside the soft limits [{lo}, {hi}]"
            )
        await self.motor.field_inst.limit_violation.write(0)
        self.model.target = float(value)
        assert self._new_move is not None
        self._new_move.set()
        return value

    # HLM/LLM: the VAL field's control limits follow at once (a client re-reads them when
    # it sees HLM or LLM change)
    @motor.fields.user_high_limit.putter
    async def _hlm_put(fields: Any, instance: Any, value: float) -> float:
        axis = fields.parent.group
        await axis.motor.write_metadata(upper_ctrl_limit=value)
        axis.soft_limits = (axis.soft_limits[0], float(value))
        return value

    @motor.fields.user_low_limit.putter
    async def _llm_put(fields: Any, instance: Any, value: float) -> float:
        axis = fields.parent.group
        await axis.motor.write_metadata(lower_ctrl_limit=value)
        axis.soft_limits = (float(value), axis.soft_limits[1])
        return value

    @motor.startup  # type: ignore[no-redef]
    async def motor(self, instance: Any, async_lib: Any) -> None:
        self._new_move = asyncio.Event()
        f = instance.field_inst
        await f.engineering_units.write(self.egu)
        # as a motor record's channels do: VAL and RBV carry the record's EGU and PREC
        await instance.write_metadata(units=self.egu)
        await f.user_readback_value.write_metadata(units=self.egu, precision=STAGE_PRECISION)
        await f.velocity.write(self.model.velocity)
        await f.seconds_to_velocity.write(0.1)
        await f.motor_step_size.write(1e-4)
        await self._set_limits(*self.soft_limits)
        await f.done_moving_to_value.write(1)
        await f.motor_is_moving.write(0)
        await f.user_readback_value.write(self.model.position())
        await self._loop(instance)

    async def _set_limits(self, lo: float, hi: float) -> None:
        f = self.motor.field_inst
        self.soft_limits = (lo, hi)
        await f.user_low_limit.write(lo)
        await f.user_high_limit.write(hi)
        await f.dial_low_limit.write(lo)
        await f.dial_high_limit.write(hi)
        # the VAL field's control limits: what a client (ophyd's EpicsMotor.limits) reads
        await self.motor.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi)

    async def _loop(self, instance: Any) -> None:
        f = instance.field_inst
        m = self.model
        assert self._new_move is not None  # (made at startup, before the loop)
        idle_dt, move_dt = 0.1, 0.02
        last = time.monotonic()
        while True:
            # limits changed by a client (caproto-put PTYCHO:STAGE:X.HLM 50)
            lo, hi = float(f.user_low_limit.value), float(f.user_high_limit.value)
            if (lo, hi) != self.soft_limits:
                await self._set_limits(lo, hi)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_move.wait(), idle_dt)
            now = time.monotonic()
            m.step_jitter(now - last)
            last = now
            if not self._new_move.is_set():
                await f.user_readback_value.write(m.position())
                continue
            self._new_move.clear()
            await self._move(instance, move_dt)
            last = time.monotonic()

    async def _move(self, instance: Any, dt: float) -> None:
        f = instance.field_inst
        m = self.model
        assert self._new_move is not None
        await f.stop.write(0)
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        await f.direction_of_travel.write(1 if m.target >= m.nominal else 0)
        await f.user_high_limit_switch.write(0)
        await f.user_low_limit_switch.write(0)
        m.offset = 0.0
        stopped = False
        while True:
            await asyncio.sleep(dt)
            m.step_jitter(dt)
            if f.stop.value:
                stopped = True
                m.target = m.nominal  # the record's VAL becomes where it stopped
                break
            if self._new_move.is_set():  # a new target while moving: go on towards it
                self._new_move.clear()
                await f.direction_of_travel.write(1 if m.target >= m.nominal else 0)
            done = m.step_motion(dt)
            await f.user_readback_value.write(m.position())
            if done:
                break
        low, high = m.at_limit_switch()
        if not stopped and not (low or high):
            m.offset = float(m.rng.normal(0.0, m.settle_sigma)) if m.settle_sigma > 0 else 0.0
            await asyncio.sleep(m.settle_time)
        await f.user_low_limit_switch.write(int(low))
        await f.user_high_limit_switch.write(int(high))
        if stopped or low or high:
            await self.motor.write(m.nominal, verify_value=False)
            await f.stop.write(0)
        await f.user_readback_value.write(m.position())
        await f.motor_is_moving.write(0)
        await f.done_moving_to_value.write(1)


class ShutterPV(PVGroup):
    """A binary shutter: ``PTYCHO:SHUTTER`` (Closed/Open) and its readback ``_RBV``."""

    state = pvproperty(
        value="Closed", name="", dtype=ChannelType.ENUM, enum_strings=("Closed", "Open")
    )
    readback = pvproperty(
        value="Closed",
        name="_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Closed", "Open"),
        read_only=True,
    )
    move_time = 0.02

    @state.putter  # type: ignore[no-redef]
    async def state(self, instance: Any, value: Any) -> Any:
        async def settle() -> None:
            await asyncio.sleep(self.move_time)
            await self.readback.write(value)

        asyncio.get_running_loop().create_task(settle())
        return value

    @property
    def is_open(self) -> bool:
        return self.readback.value in ("Open", 1)


# -- the FCCD: camera and HDF5 plugin --------------------------------------------------------


def _on(value: Any, name: str) -> bool:
    return value in (1, name) or value is True


class HDF5Plugin(PVGroup):
    """areaDetector's NDFileHDF5 plugin, as far as a Bluesky device drives it."""

    file_path = pvproperty(value="/tmp/", name="FilePath", **STRING)
    file_path_rbv = pvproperty(value="/tmp/", name="FilePath_RBV", read_only=True, **STRING)
    file_path_exists = pvproperty(value=1, name="FilePathExists_RBV", read_only=True)
    file_name = pvproperty(value="fccd", name="FileName", **STRING)
    file_name_rbv = pvproperty(value="fccd", name="FileName_RBV", read_only=True, **STRING)
    file_template = pvproperty(value="%s%s_%6.6d.h5", name="FileTemplate", **STRING)
    file_template_rbv = pvproperty(
        value="%s%s_%6.6d.h5", name="FileTemplate_RBV", read_only=True, **STRING
    )
    file_number = pvproperty(value=0, name="FileNumber")
    file_number_rbv = pvproperty(value=0, name="FileNumber_RBV", read_only=True)
    auto_increment = pvproperty(value=1, name="AutoIncrement")
    file_write_mode = pvproperty(
        value="Stream",
        name="FileWriteMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Single", "Capture", "Stream"),
    )
    file_write_mode_rbv = pvproperty(
        value="Stream",
        name="FileWriteMode_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Single", "Capture", "Stream"),
        read_only=True,
    )
    capture = pvproperty(
        value="Done", name="Capture", dtype=ChannelType.ENUM, enum_strings=("Done", "Capture")
    )
    capture_rbv = pvproperty(
        value="Done",
        name="Capture_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Done", "Capture"),
        read_only=True,
    )
    num_capture = pvproperty(value=0, name="NumCapture")
    num_capture_rbv = pvproperty(value=0, name="NumCapture_RBV", read_only=True)
    num_captured = pvproperty(value=0, name="NumCaptured_RBV", read_only=True)
    full_file_name = pvproperty(value="", name="FullFileName_RBV", read_only=True, **STRING)
    swmr_mode = pvproperty(value=1, name="SWMRMode")
    swmr_mode_rbv = pvproperty(value=1, name="SWMRMode_RBV", read_only=True)
    array_counter = pvproperty(value=0, name="ArrayCounter_RBV", read_only=True)
    write_status = pvproperty(
        value="Write OK",
        name="WriteStatus",
        dtype=ChannelType.ENUM,
        enum_strings=("Write OK", "Write error"),
        read_only=True,
    )
    write_message = pvproperty(value="", name="WriteMessage", read_only=True, **STRING)
    # faults to test against
    sim_write_delay = pvproperty(value=0.0, name="SimWriteDelay", units="s")
    sim_no_file = pvproperty(value=0, name="SimNoFile")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer: FrameFileWriter | None = None
        self._queue: asyncio.Queue | None = None
        self._writer_task: asyncio.Task | None = None
        self._pending = 0

    # the setting PVs and their readbacks
    @file_path.putter  # type: ignore[no-redef]
    async def file_path(self, instance: Any, value: str) -> str:
        value = value if value.endswith("/") else value + "/"
        await self.file_path_rbv.write(value)
        await self.file_path_exists.write(int(Path(value).is_dir()))
        return value

    @file_name.putter  # type: ignore[no-redef]
    async def file_name(self, instance: Any, value: str) -> str:
        await self.file_name_rbv.write(value)
        return value

    @file_template.putter  # type: ignore[no-redef]
    async def file_template(self, instance: Any, value: str) -> str:
        await self.file_template_rbv.write(value)
        return value

    @file_number.putter  # type: ignore[no-redef]
    async def file_number(self, instance: Any, value: int) -> int:
        await self.file_number_rbv.write(value)
        return value

    @file_write_mode.putter  # type: ignore[no-redef]
    async def file_write_mode(self, instance: Any, value: Any) -> Any:
        await self.file_write_mode_rbv.write(value)
        return value

    @num_capture.putter  # type: ignore[no-redef]
    async def num_capture(self, instance: Any, value: int) -> int:
        await self.num_capture_rbv.write(value)
        return value

    @swmr_mode.putter  # type: ignore[no-redef]
    async def swmr_mode(self, instance: Any, value: int) -> int:
        await self.swmr_mode_rbv.write(value)
        return value

    @capture.putter  # type: ignore[no-redef]
    async def capture(self, instance: Any, value: Any) -> Any:
        if _on(value, "Capture"):
            if self._writer is None and not self._capturing:
                await self._open()
        else:
            await self._close()
        return value

    @property
    def _capturing(self) -> bool:
        return _on(self.capture_rbv.value, "Capture")

    async def _open(self) -> None:
        directory = str(self.file_path.value)
        name = str(self.file_template.value) % (
            directory,
            str(self.file_name.value),
            int(self.file_number.value),
        )
        if not Path(directory).is_dir():
            await self._error(f"FilePath {directory} does not exist")
            raise OSError(f"HDF1: FilePath {directory} does not exist")
        await self.full_file_name.write(name)
        if not self.sim_no_file.value:
            try:
                self._writer = await asyncio.to_thread(
                    FrameFileWriter, name, fccd_geom.RAW_SHAPE, "uint16", FRAME_ATTRIBUTES
                )
            except OSError as err:
                await self._error(str(err))
                raise
            await self.write_status.write("Write OK")
            await self.write_message.write("")
        else:
            await self._error(f"cannot create {name}: no space left on device (simulated)")
        if int(self.auto_increment.value):
            await self.file_number.write(int(self.file_number.value) + 1)
        await self.num_captured.write(0)
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop(self._queue))
        await self.capture_rbv.write("Capture")
        log.info("capturing to %s", name)

    async def _error(self, message: str) -> None:
        log.warning("HDF1: %s", message)
        await self.write_status.write("Write error")
        await self.write_message.write(message[:255])

    async def _close(self) -> None:
        if self._queue is not None:
            await self._queue.put(None)  # after the frames still on their way
            assert self._writer_task is not None
            await self._writer_task
            self._queue = self._writer_task = None
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.close)
            log.info("closed %s (%d frames)", writer.path, writer.count)
        await self.capture_rbv.write("Done")

    async def on_frame(self, frame: np.ndarray, attributes: dict[str, float]) -> None:
        """A new NDArray from the camera: queued for the file (written at once, or
        *SimWriteDelay* s later)."""
        await self.array_counter.write(int(self.array_counter.value) + 1)
        if self._queue is None or not self._capturing:
            return
        due = time.monotonic() + float(self.sim_write_delay.value)
        await self._queue.put((due, frame, attributes))
        if float(self.sim_write_delay.value) <= 0:
            await self._queue.join()  # written before the camera says the frame is done

    async def _write_loop(self, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            if item is None:
                queue.task_done()
                return
            due, frame, attributes = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._writer is not None:
                try:
                    await asyncio.to_thread(self._writer.append, frame, attributes)
                except Exception as err:
                    await self._error(f"writing a frame failed: {err}")
            await self.num_captured.write(int(self.num_captured.value) + 1)
            queue.task_done()
            n = int(self.num_capture.value)
            if (
                n > 0
                and int(self.num_captured.value) >= n
                and _on(self.file_write_mode.value, "Stream")
            ):
                asyncio.get_running_loop().create_task(self.capture.write("Done"))


class FCCDCamera(PVGroup):
    """areaDetector camera driver of the simulated FCCD."""

    acquire = pvproperty(
        value="Done", name="Acquire", dtype=ChannelType.ENUM, enum_strings=("Done", "Acquire")
    )
    acquire_rbv = pvproperty(
        value="Done",
        name="Acquire_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Done", "Acquire"),
        read_only=True,
    )
    acquire_time = pvproperty(value=0.05, name="AcquireTime", units="s", precision=4)
    acquire_time_rbv = pvproperty(value=0.05, name="AcquireTime_RBV", units="s", read_only=True)
    acquire_period = pvproperty(value=0.0, name="AcquirePeriod", units="s", precision=4)
    acquire_period_rbv = pvproperty(value=0.0, name="AcquirePeriod_RBV", units="s", read_only=True)
    num_images = pvproperty(value=1, name="NumImages")
    num_images_rbv = pvproperty(value=1, name="NumImages_RBV", read_only=True)
    image_mode = pvproperty(
        value="Single",
        name="ImageMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Single", "Multiple", "Continuous"),
    )
    image_mode_rbv = pvproperty(
        value="Single",
        name="ImageMode_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Single", "Multiple", "Continuous"),
        read_only=True,
    )
    trigger_mode = pvproperty(
        value="Internal",
        name="TriggerMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Internal", "External"),
    )
    trigger_mode_rbv = pvproperty(
        value="Internal",
        name="TriggerMode_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Internal", "External"),
        read_only=True,
    )
    detector_state = pvproperty(
        value="Idle",
        name="DetectorState_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error"),
        read_only=True,
    )
    array_counter = pvproperty(value=0, name="ArrayCounter")
    array_counter_rbv = pvproperty(value=0, name="ArrayCounter_RBV", read_only=True)
    max_size_x = pvproperty(value=fccd_geom.RAW_SHAPE[1], name="MaxSizeX_RBV", read_only=True)
    max_size_y = pvproperty(value=fccd_geom.RAW_SHAPE[0], name="MaxSizeY_RBV", read_only=True)
    # the FCCD's own settings (what the simulated device has as configuration)
    gain_mode = pvproperty(
        value="Auto",
        name="GainMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Auto", "x1", "x2", "x8"),
    )
    gain_mode_rbv = pvproperty(
        value="Auto",
        name="GainMode_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("Auto", "x1", "x2", "x8"),
        read_only=True,
    )
    adu_per_photon = pvproperty(value=36.5, name="ADUPerPhoton_RBV", read_only=True, precision=3)
    pixel_size = pvproperty(value=30e-6, name="PixelSize_RBV", units="m", read_only=True)
    energy = pvproperty(value=800.0, name="Energy", units="eV", precision=2)
    energy_rbv = pvproperty(value=800.0, name="Energy_RBV", units="eV", read_only=True)
    distance = pvproperty(value=0.080, name="Distance", units="m", precision=4)
    distance_rbv = pvproperty(value=0.080, name="Distance_RBV", units="m", read_only=True)
    beamstop_row = pvproperty(value=975.0, name="BeamstopRow", units="px")
    beamstop_row_rbv = pvproperty(value=975.0, name="BeamstopRow_RBV", units="px", read_only=True)
    beamstop_col = pvproperty(value=463.0, name="BeamstopCol", units="px")
    beamstop_col_rbv = pvproperty(value=463.0, name="BeamstopCol_RBV", units="px", read_only=True)
    beamstop_radius = pvproperty(value=40.0, name="BeamstopRadius", units="px")
    beamstop_radius_rbv = pvproperty(
        value=40.0, name="BeamstopRadius_RBV", units="px", read_only=True
    )
    beamstop_transmission = pvproperty(value=0.05, name="BeamstopTransmission")
    beamstop_transmission_rbv = pvproperty(
        value=0.05, name="BeamstopTransmission_RBV", read_only=True
    )
    sim_flux = pvproperty(value=2e7, name="SimFlux", units="ph/s")
    sim_flux_rbv = pvproperty(value=2e7, name="SimFlux_RBV", units="ph/s", read_only=True)
    # a fault to test against: acquisitions that never finish
    sim_hang = pvproperty(value=0, name="SimHang")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: FrameSource | None = None  # set by the IOC
        self._task: asyncio.Task | None = None

    # settings → readbacks
    async def _rbv(self, rbv: Any, value: Any) -> Any:
        await rbv.write(value)
        return value

    @acquire_time.putter  # type: ignore[no-redef]
    async def acquire_time(self, instance: Any, value: float) -> float:
        if value <= 0:
            raise ValueError("AcquireTime must be > 0 s")
        return await self._rbv(self.acquire_time_rbv, value)

    @acquire_period.putter  # type: ignore[no-redef]
    async def acquire_period(self, instance: Any, value: float) -> float:
        return await self._rbv(self.acquire_period_rbv, value)

    @num_images.putter  # type: ignore[no-redef]
    async def num_images(self, instance: Any, value: int) -> int:
        return await self._rbv(self.num_images_rbv, value)

    @image_mode.putter  # type: ignore[no-redef]
    async def image_mode(self, instance: Any, value: Any) -> Any:
        return await self._rbv(self.image_mode_rbv, value)

    @trigger_mode.putter  # type: ignore[no-redef]
    async def trigger_mode(self, instance: Any, value: Any) -> Any:
        return await self._rbv(self.trigger_mode_rbv, value)

    @gain_mode.putter  # type: ignore[no-redef]
    async def gain_mode(self, instance: Any, value: Any) -> Any:
        return await self._rbv(self.gain_mode_rbv, value)

    @array_counter.putter  # type: ignore[no-redef]
    async def array_counter(self, instance: Any, value: int) -> int:
        return await self._rbv(self.array_counter_rbv, value)

    @energy.putter  # type: ignore[no-redef]
    async def energy(self, instance: Any, value: float) -> float:
        if value <= 0:
            raise ValueError("Energy must be > 0 eV")
        await self.adu_per_photon.write(FCCDNoiseModel.for_energy(value).adu_per_photon)
        return await self._rbv(self.energy_rbv, value)

    @distance.putter  # type: ignore[no-redef]
    async def distance(self, instance: Any, value: float) -> float:
        return await self._rbv(self.distance_rbv, value)

    @beamstop_row.putter  # type: ignore[no-redef]
    async def beamstop_row(self, instance: Any, value: float) -> float:
        return await self._rbv(self.beamstop_row_rbv, value)

    @beamstop_col.putter  # type: ignore[no-redef]
    async def beamstop_col(self, instance: Any, value: float) -> float:
        return await self._rbv(self.beamstop_col_rbv, value)

    @beamstop_radius.putter  # type: ignore[no-redef]
    async def beamstop_radius(self, instance: Any, value: float) -> float:
        return await self._rbv(self.beamstop_radius_rbv, value)

    @beamstop_transmission.putter  # type: ignore[no-redef]
    async def beamstop_transmission(self, instance: Any, value: float) -> float:
        return await self._rbv(self.beamstop_transmission_rbv, value)

    @sim_flux.putter  # type: ignore[no-redef]
    async def sim_flux(self, instance: Any, value: float) -> float:
        return await self._rbv(self.sim_flux_rbv, value)

    @acquire.putter  # type: ignore[no-redef]
    async def acquire(self, instance: Any, value: Any) -> Any:
        if _on(value, "Acquire"):
            if self._task is None or self._task.done():
                await self.acquire_rbv.write("Acquire")
                self._task = asyncio.get_running_loop().create_task(self._acquire())
        elif self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self._done()
        return value

    async def _done(self) -> None:
        await self.detector_state.write("Idle")
        await self.acquire_rbv.write("Done")
        await self.acquire.write("Done", verify_value=False)

    async def _acquire(self) -> None:
        assert self.frames is not None
        mode = self.image_mode.value
        n = 1 if mode in ("Single", 0) else int(self.num_images.value)
        i = 0
        try:
            while mode in ("Continuous", 2) or i < n:
                t0 = time.monotonic()
                await self.detector_state.write("Acquire")
                t_exp = float(self.acquire_time.value)
                start = self.frames.positions()
                if self.sim_hang.value:
                    await asyncio.Event().wait()  # a camera that never answers
                # the image is drawn (in a thread: tens of ms) while the exposure runs, at
                # where the stage is when it starts (the jitter is slow against an exposure)
                frame_task = asyncio.ensure_future(
                    asyncio.to_thread(
                        self.frames.frame, self, start, float(self.sim_flux.value) * t_exp
                    )
                )
                await asyncio.sleep(t_exp)
                await self.detector_state.write("Readout")
                frame = await frame_task
                counter = int(self.array_counter_rbv.value) + 1
                attributes = {
                    "NDArrayUniqueId": float(counter),
                    "NDArrayTimeStamp": time.time(),
                    "SampleX": start[0],  # where the stage was for this image (m)
                    "SampleY": start[1],
                }
                await self.parent.hdf.on_frame(frame, attributes)
                await self.array_counter.write(counter)
                i += 1
                rest = float(self.acquire_period.value) - (time.monotonic() - t0)
                if rest > 0:
                    await asyncio.sleep(rest)
        except asyncio.CancelledError:
            raise
        except Exception:  # the camera says Error; the IOC goes on
            log.exception("acquisition failed")
            await self.detector_state.write("Error")
            await self.acquire_rbv.write("Done")
            await self.acquire.write("Done", verify_value=False)
            return
        await self._done()


class FCCD(PVGroup):
    """The FCCD: camera driver ``cam1:`` and HDF5 plugin ``HDF1:``."""

    cam = SubGroup(FCCDCamera, prefix="cam1:")
    hdf = SubGroup(HDF5Plugin, prefix="HDF1:")


class FrameSource:
    """Raw FCCD frames of the simulator at where the stage is, dark while the shutter is shut."""

    def __init__(
        self,
        x: MotorAxis,
        y: MotorAxis,
        shutter: ShutterPV,
        seed: int = 0,
        defects: FCCDDefects | None = DEFAULT_DEFECTS,
        beam_center: tuple[int, int] = (972, 466),
    ) -> None:
        self.x, self.y, self.shutter = x, y, shutter
        self.rng = np.random.default_rng(seed)
        self.defects = defects  # None: an ideal camera
        self.beam_center = beam_center
        self._sample: SimulatedSample | None = None
        self._noise: tuple[tuple, FCCDNoiseModel] | None = None

    def positions(self) -> tuple[float, float]:
        """(x, y) in m: where the stage is now (the motors' true positions)."""
        sx = metres_per_unit(self.x.egu)
        sy = metres_per_unit(self.y.egu)
        return self.x.model.position() * sx, self.y.model.position() * sy

    def frame(self, cam: FCCDCamera, start: tuple[float, float], photons: float) -> np.ndarray:
        """One raw frame (run in a worker thread: it takes tens of ms)."""
        energy = float(cam.energy.value)
        g = Geometry(
            energy_ev=energy,
            distance_m=float(cam.distance.value),
            pixel_size_m=float(cam.pixel_size.value),
        )
        beamstop = Beamstop(
            (float(cam.beamstop_row.value), float(cam.beamstop_col.value)),
            float(cam.beamstop_radius.value),
            float(cam.beamstop_transmission.value),
        )
        key = (energy, beamstop)
        if self._noise is None or self._noise[0] != key:
            self._noise = (
                key,
                FCCDNoiseModel.for_energy(energy, defects=self.defects, beamstop=beamstop),
            )
        noise = self._noise[1]
        if not self.shutter.is_open:
            return noise.raw_frame(self.rng)
        if self._sample is None or self._sample.geometry != g:
            self._sample = SimulatedSample(geometry=g, zone_plate=ZonePlate())
        return noise.raw_frame(self.rng, self._sample.intensity(start, photons), self.beam_center)


@dataclass
class IocConfig:
    """What ``bluesky-ptycho ioc`` serves (its command-line options)."""

    fccd_prefix: str = FCCD_PREFIX
    x_pv: str = STAGE_X_PV
    y_pv: str = STAGE_Y_PV
    shutter_pv: str = SHUTTER_PV
    egu: str = "um"
    limits: tuple[float, float] = (-50.0, 50.0)
    travel: tuple[float, float] = (-100.0, 100.0)
    velocity: float = 100.0
    settle_sigma: float = 0.02
    jitter_sigma: float = 0.01
    jitter_tau: float = 0.5
    seed: int = 0
    defects: bool = True


def make_ioc(config: IocConfig) -> tuple[dict[str, Any], dict[str, PVGroup]]:
    """The PV database and the groups serving it."""
    metres_per_unit(config.egu)  # refuse an unknown unit now
    groups: dict[str, Any] = {}
    for k, (axis, pv) in enumerate((("x", config.x_pv), ("y", config.y_pv))):
        model = MotorModel(
            velocity=config.velocity,
            settle_sigma=config.settle_sigma,
            jitter_sigma=config.jitter_sigma,
            jitter_tau=config.jitter_tau,
            travel=config.travel,
            seed=config.seed + 1 + k,
        )
        groups[axis] = MotorAxis(prefix=pv, model=model, limits=config.limits, egu=config.egu)
    groups["shutter"] = ShutterPV(prefix=config.shutter_pv)
    fccd = FCCD(prefix=config.fccd_prefix)
    fccd.cam.frames = FrameSource(
        groups["x"],
        groups["y"],
        groups["shutter"],
        seed=config.seed,
        defects=FCCDDefects() if config.defects else None,
    )
    groups["fccd"] = fccd
    pvdb: dict[str, Any] = {}
    for g in groups.values():
        pvdb.update(g.pvdb)
    return pvdb, groups


def serve(config: IocConfig, interfaces: list[str] | None = None) -> None:
    """Serve the PVs until interrupted (caproto's asyncio server).

    The port is ``EPICS_CA_SERVER_PORT`` (5064 by default); the interfaces
    ``EPICS_CAS_INTF_ADDR_LIST`` or *interfaces* (all by default).
    """
    from caproto.server import run

    pvdb, _ = make_ioc(config)
    if interfaces is None:
        env = os.environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split()
        interfaces = env or None
    run(pvdb, interfaces=interfaces)
