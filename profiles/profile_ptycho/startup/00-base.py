# IPython startup for a ptychography session:  ipython --profile-dir=profiles/profile_ptycho
# Files run in name order. Then:  RE(ptycho_scan(fccd, stage, shutter, num_points=400))
# Environment: BLUESKY_PTYCHO_DATA (data dir), BLUESKY_PTYCHO_CATALOG and
# BLUESKY_PTYCHO_API_KEY (a Tiled server; the embedded on-disk catalog without),
# BLUESKY_PTYCHO_PIPELINE (a pipeline file; the package's default without),
# BLUESKY_PTYCHO_DEVICES (sim or epics; 20-devices.py has the PV names).
# The same files are bluesky-queueserver's worker start-up (start-re-manager --startup-dir
# profiles/profile_ptycho/startup; README): plain Python, nothing IPython-only.
import logging

from bluesky import RunEngine
from bluesky import plan_stubs as bps  # noqa: F401
from bluesky import plans as bp  # noqa: F401
from bluesky import preprocessors as bpp  # noqa: F401
from bluesky.utils import PersistentDict

from bluesky_ptycho.acquisition.plans import ptycho_scan  # noqa: F401
from bluesky_ptycho.storage.logs import console
from bluesky_ptycho.storage.paths import data_dir, log_dir  # noqa: F401
from bluesky_ptycho.storage.scans import ScanCounter

console(logging.WARNING)  # stages and the catalog writer warn on the terminal
# scan ids from the data directory's counter: the demo, this session and the next go on counting
RE = RunEngine({}, scan_id_source=ScanCounter())
RE.md = PersistentDict(str(data_dir() / "runengine-metadata"))  # metadata survives the session
