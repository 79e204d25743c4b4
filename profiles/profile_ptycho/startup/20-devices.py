# The devices. Simulated by default (`make demo` and a fresh session need nothing); the
# beamline's FCCD, stage and shutter over EPICS with BLUESKY_PTYCHO_DEVICES=epics, at the PV
# names of the configuration below (each can be changed here, or by its environment variable).
# `bluesky-ptycho ioc` serves those PVs from a soft IOC to try it without the hardware.
# Also: the storage ring current the suspender watches (an EPICS PV at a beamline).
import os

from ophyd import Signal

from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD, pvs

DEVICES = os.environ.get("BLUESKY_PTYCHO_DEVICES", "sim")  # "sim" or "epics"
EPICS_PVS = {
    "fccd_prefix": os.environ.get("BLUESKY_PTYCHO_FCCD_PREFIX", pvs.FCCD_PREFIX),  # cam1:, HDF1:
    "x_pv": os.environ.get("BLUESKY_PTYCHO_STAGE_X_PV", pvs.STAGE_X_PV),  # motor record
    "y_pv": os.environ.get("BLUESKY_PTYCHO_STAGE_Y_PV", pvs.STAGE_Y_PV),  # motor record
    "shutter_pv": os.environ.get("BLUESKY_PTYCHO_SHUTTER_PV", pvs.SHUTTER_PV),  # and its _RBV
}

if DEVICES == "epics":
    from bluesky_ptycho.devices.epics import epics_devices

    # connects now: an unreachable IOC is said here, naming its PVs
    fccd, stage, shutter = epics_devices(write_path=catalog.raw_dir, **EPICS_PVS)
elif DEVICES == "sim":
    stage = SampleStage(name="stage")
    shutter = Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=catalog.raw_dir)
else:
    raise ValueError(f"BLUESKY_PTYCHO_DEVICES={DEVICES!r}: use 'sim' (simulated) or 'epics'")
ring_current = Signal(name="ring_current", value=400.0, metadata={"units": "mA"})
