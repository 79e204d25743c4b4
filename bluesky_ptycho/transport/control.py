"""The control channel's client: ``bluesky-ptycho status`` and ``bluesky-ptycho control``.

Requests and replies are msgpack maps (:func:`bluesky_ptycho.io.codec.pack`, read back
with the strict :func:`~bluesky_ptycho.io.codec.unpack_value`) between a REQ socket
and the back-end's ROUTER socket. Requests:
``{"command": "status"}``, ``{"command": "set", "stage": KEY, "params":
{...}}``, ``{"command": "abort"}``, ``{"command": "clear"}``,
``{"command": "reset"}``, ``{"command": "ping"}``. Replies carry ``ok`` and,
when not ok, ``error``.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from bluesky_ptycho.io.codec import BadMessage, pack, unpack_value
from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, DEFAULT_HOST, address
from bluesky_ptycho.transport.security import apply, client_keys


class ControlError(RuntimeError):
    """The back-end refused a command (or did not answer)."""


def request(
    command: str,
    control: str = address(DEFAULT_HOST, DEFAULT_CONTROL_PORT),
    keys: Any = None,
    timeout: float = 5.0,
    **fields: Any,
) -> dict:
    """Send one command to the back-end at *control*; its reply (``ok`` true) or ControlError."""
    context: zmq.Context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    sock.rcvtimeo = int(timeout * 1000)
    sock.sndtimeo = int(timeout * 1000)
    apply(sock, client_keys(keys))
    sock.connect(control)
    try:
        sock.send(pack({"command": command, **fields}))
        reply = unpack_value(sock.recv(), max_bytes=64 * 2**20)
    except zmq.Again:
        raise ControlError(
            f"no answer from the back-end at {control} within {timeout} s: is `bluesky-ptycho "
            "serve` running there (and do you have its keys, if it uses them)?"
        ) from None
    except BadMessage as err:
        raise ControlError(
            f"the back-end at {control} answered something that is not a reply: {err}"
        ) from None
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise ControlError(f"the back-end at {control} answered {type(reply).__name__}, not a map")
    if not reply.get("ok"):
        raise ControlError(f"the back-end at {control} refused {command!r}: {reply.get('error')}")
    return reply


def format_status(status: dict) -> str:
    """A status reply as the table ``bluesky-ptycho status`` prints."""
    srv = status.get("server", {})
    w = status.get("workers") or {}
    c = srv.get("counters", {})
    lines = [
        f"back-end {srv.get('address')}  up {srv.get('uptime')} s  device {status.get('device')}  "
        f"backlog {srv.get('backlog')}/{srv.get('max_backlog')}  open runs "
        f"{srv.get('open_runs', 0)}/{srv.get('max_open_runs', '?')}",
        f"documents received {c.get('received', 0)}, duplicates {c.get('duplicates', 0)}; "
        f"runs resumed {c.get('resumed_runs', 0)}, refused {c.get('refused_runs', 0)}, closed "
        f"idle {c.get('idle_closed_runs', 0)}; frame reads refused "
        f"{srv.get('frame_reads_refused', 0)}",
    ]
    shown = ("received", "duplicates", "resumed_runs", "refused_runs", "idle_closed_runs",
             "control_requests", "paused_polls")  # fmt: skip
    rejected = {k: v for k, v in c.items() if v and k not in shown}
    lines.append(
        "rejected or failed: "
        + (", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected else "none")
    )
    if w:
        lines.append(
            f"dask: {w.get('n', '?')} worker(s) at {w.get('scheduler')} "
            f"{w.get('error', '')}".rstrip()
        )
    now = status.get("time", time.time())
    for uid, run in status.get("runs", {}).items():
        scan = f"scan {run['scan_id']}, " if run.get("scan_id") is not None else ""
        age = f", {now - run['started']:.0f} s" if run.get("started") else ""
        lines.append(
            f"run {uid[:8]} ({scan}{'finished' if run['finished'] else 'in progress'}{age})"
        )
        lines.append(
            f"  {'stage':<16}{'state':<9}{'in':>7}{'in/s':>7}{'out':>7}{'out/s':>7}"
            f"{'backlog':>9}{'beat s':>8}  last error"
        )
        for key, s in run["stages"].items():
            lines.append(
                f"  {key:<16}{s['state']:<9}{s['frames_in']:>7}{s.get('rate_in', 0.0):>7.1f}"
                f"{s['frames_out']:>7}{s['rate']:>7.1f}{s['backlog']:>9}"
                f"{s['heartbeat_age']:>8.1f}  {s['last_error'][:60]}"
            )
        for key, s in run["stages"].items():
            if "iteration" in s:
                lines.append(f"  {key}: {reconstruction_line(s)}")
    if not status.get("runs"):
        lines.append(f"no runs yet ({time.strftime('%H:%M:%S', time.localtime(now))})")
    return "\n".join(lines)


def reconstruction_line(s: dict) -> str:
    """Where a reconstruction stands, from its status: phase, iteration, data error, frames
    used, flagged, resolution."""
    error = s.get("data_error", float("nan"))
    resolution = s.get("resolution_nm", float("nan"))
    parts = [
        str(s.get("phase", "")),
        f"iteration {s.get('iteration', 0)}",
        f"data error {error:.4g}" if error == error else "data error -",
        f"{s.get('frames_used', 0)} of {s.get('points', '?')} frames used",
        f"{s.get('flagged', 0)} flagged",
    ]
    if resolution == resolution:
        parts.append(f"resolution {resolution:.3g} nm")
    return ", ".join(p for p in parts if p)
