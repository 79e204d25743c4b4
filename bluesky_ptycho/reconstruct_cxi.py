"""Moved to :mod:`bluesky_ptycho.apps.reconstruct`; this alias goes in the next release."""

from bluesky_ptycho.deprecation import moved_to

__getattr__ = moved_to(__name__, "bluesky_ptycho.apps.reconstruct")
