"""Connections of devices to their control system, checked before a run opens."""

from __future__ import annotations

from typing import Any

#: seconds a plan waits for a device's PVs before it refuses to start
CONNECT_TIMEOUT_S = 5.0


def unconnected_pvs(device: Any) -> list[str]:
    """The PV names of *device*'s signals that are not connected (none for soft devices)."""
    out = []
    for sig in _signals(device):
        if not getattr(sig, "connected", True):
            for attr in ("pvname", "setpoint_pvname"):
                pv = getattr(sig, attr, None)
                if pv and pv not in out:
                    out.append(pv)
            if not any(getattr(sig, a, None) for a in ("pvname", "setpoint_pvname")):
                out.append(getattr(sig, "name", repr(sig)))
    return out


def _signals(device: Any) -> list[Any]:
    walk = getattr(device, "walk_signals", None)
    if walk is None:
        return [device]
    return [item.item for item in walk(include_lazy=False)]


def require_connected(*devices: Any, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Wait up to *timeout* s for every device's PVs; raise ``ConnectionError`` naming the
    PVs that did not connect (and how to check the IOC) otherwise.

    Soft devices (no PVs) pass at once.
    """
    problems = []
    for dev in devices:
        if getattr(dev, "connected", True):
            continue
        try:
            dev.wait_for_connection(timeout=timeout)
        except Exception:
            pass
        missing = unconnected_pvs(dev)
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            problems.append(f"{dev.name}: {shown}")
    if problems:
        raise ConnectionError(
            f"no answer over Channel Access within {timeout:g} s from "
            + "; ".join(problems)
            + ". Is the IOC running (bluesky-ptycho ioc) and reachable? Check "
            "EPICS_CA_ADDR_LIST / EPICS_CA_SERVER_PORT, and the PV prefixes in the profile's "
            "configuration (caproto-get PV answers from a shell when it is)."
        )
