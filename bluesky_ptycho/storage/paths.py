"""Where the user's data and run logs go (environment first, then the platform's folders)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "BLUESKY_PTYCHO_DATA"


ENV_LOGS = "BLUESKY_PTYCHO_LOGS"


def data_dir() -> Path:
    """The user's data directory (``$BLUESKY_PTYCHO_DATA``, else the platform's)."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    import platformdirs

    return platformdirs.user_data_path("bluesky_ptycho")


def log_dir() -> Path:
    """Where per-run log files go (``$BLUESKY_PTYCHO_LOGS``, else the platform's log dir)."""
    if os.environ.get(ENV_LOGS):
        return Path(os.environ[ENV_LOGS]).expanduser()
    import platformdirs

    return platformdirs.user_log_path("bluesky_ptycho")
