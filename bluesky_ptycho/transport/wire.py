"""Moved to :mod:`bluesky_ptycho.io.codec` (one strict decoder for sockets and spools alike);
this alias goes in the next release."""

from bluesky_ptycho.deprecation import moved_to

__getattr__ = moved_to(__name__, "bluesky_ptycho.io.codec")
