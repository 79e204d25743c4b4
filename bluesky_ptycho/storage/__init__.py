"""Storage: where runs, spooled documents and run logs live.

- :mod:`.paths`: the user's data and log folders
- :mod:`.catalog`: ``Catalog``, an embedded on-disk Tiled catalog or a Tiled server
- :mod:`.lock`: ``CatalogLock``, one process at a time on an embedded catalog
- :mod:`.scans`: ``ScanCounter``, one scan counter per data directory
- :mod:`.listing`: the latest scans and replays, read fast (``bluesky-ptycho runs``)
- :mod:`.writer`: ``CatalogWriter``, every document spooled to disk before Tiled sees it
- :mod:`.logs`: the console, one log file per run, ``bluesky-ptycho logs``
"""
