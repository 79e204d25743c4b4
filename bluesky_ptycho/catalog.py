"""Moved to :mod:`bluesky_ptycho.storage.catalog`; this alias goes in the next release."""

from bluesky_ptycho.deprecation import moved_to

__getattr__ = moved_to(
    __name__,
    "bluesky_ptycho.storage.catalog",
    "bluesky_ptycho.storage.paths",
    "bluesky_ptycho.storage.writer",
)
