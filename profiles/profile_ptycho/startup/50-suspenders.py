# Pause the scan while the beam is down; resume (re-taking the interrupted point) when it is back.
from bluesky.suspenders import SuspendFloor

RE.install_suspender(
    SuspendFloor(
        ring_current,
        200.0,
        resume_thresh=350.0,
        sleep=2.0,
        tripped_message="the ring current is below 200 mA: the scan waits for the beam",
    )
)

# Pause while the quality monitor says the beam (or the data) is bad: its verdicts drive the
# `quality.bad` signal; it opens again once the ring current is back above 350 mA.
from bluesky_ptycho.acquisition.feedback import install_quality_suspender

quality, quality_feedback = install_quality_suspender(
    RE,
    results,
    beam=ring_current,
    beam_ok=350.0,
    settle=2.0,
    sleep=1.0,
)

# Pause while the spool cannot be written (a full disk): nothing is taken unrecorded. The scan
# goes on when the disk takes documents again, and fails after 10 minutes without.
from bluesky_ptycho.storage.guard import SpoolGuard

spool_guard = SpoolGuard(catalog.writer, give_up=600.0)
spool_guard.install(RE)

# The same for the frames' disk: pause while fewer than 20 raw frames fit in the catalog's raw
# folder (where the detector writes), fail the run after 10 minutes without space.
from bluesky_ptycho.core.fccd import RAW_FRAME_BYTES
from bluesky_ptycho.storage.guard import FramesDiskGuard

frames_guard = FramesDiskGuard(catalog.raw_dir, RAW_FRAME_BYTES, give_up=600.0)
frames_guard.install(RE)
