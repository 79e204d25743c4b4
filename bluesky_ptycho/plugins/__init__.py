"""The plugin API a third party builds a stage on.

- :class:`Stage` and :class:`DerivedRun` (:mod:`.stage`): a stage is an
  ``event_model.DocumentRouter`` with its own worker thread whose results are
  documents of a derived run naming its source run.
- :class:`Param` (declared in :mod:`bluesky_ptycho.core.params`): one
  declaration per parameter, from which validation and the ``stages``
  listing derive.
- The registry (:mod:`.registry`): stages are found under the entry-point
  group ``bluesky_ptycho.stages``; a package adds one by declaring an entry
  point there (``tests/plugin_example/`` is a complete one).
"""

from __future__ import annotations

from bluesky_ptycho.core.params import Param
from bluesky_ptycho.plugins.registry import (
    GROUP,
    available_stages,
    describe,
    distribution_of,
    load_stage,
)
from bluesky_ptycho.plugins.stage import (
    Callback,
    DerivedRun,
    ExitStatus,
    Stage,
    array_key,
    metadata,
    scalar_key,
)

__all__ = [
    "GROUP",
    "Callback",
    "DerivedRun",
    "ExitStatus",
    "Param",
    "Stage",
    "array_key",
    "available_stages",
    "describe",
    "distribution_of",
    "load_stage",
    "metadata",
    "scalar_key",
]
