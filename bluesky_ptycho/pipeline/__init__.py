"""Pipelines: which stages run, how they connect, and where.

- :mod:`.files`: pipeline files (TOML) and their check, before any run
- :mod:`.runner`: ``Pipeline``, the stages of a file wired per run (a ``RunRouter``)
- :mod:`.dask`: the Dask cluster stages with ``where = "dask"`` spread over
- :mod:`.assignments`: ``KEY=VALUE`` settings from a command line
"""
