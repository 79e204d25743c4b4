# Pause the scan while the beam is down; resume (re-taking the interrupted point) when it is back.
from bluesky.suspenders import SuspendFloor

RE.install_suspender(SuspendFloor(
    ring_current, 200.0, resume_thresh=350.0, sleep=2.0,
    tripped_message="the ring current is below 200 mA: the scan waits for the beam",
))
