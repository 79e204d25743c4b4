# The simulated FCCD and sample stage (a real FCCD replaces SimFCCD; nothing else changes),
# the shutter, and the storage ring current the suspender watches (an EPICS PV at a beamline).
from ophyd import Signal

from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD

stage = SampleStage(name="stage")
shutter = Shutter(name="shutter")
fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=catalog.raw_dir)
ring_current = Signal(name="ring_current", value=400.0, metadata={"units": "mA"})
