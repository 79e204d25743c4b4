# Every run (raw, and those the stages derive) is stored in the catalog.
import os

from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.lock import CatalogInUse

try:
    catalog = Catalog(
        os.environ.get("BLUESKY_PTYCHO_CATALOG"), api_key=os.environ.get("BLUESKY_PTYCHO_API_KEY")
    )
except CatalogInUse as err:  # another process has this data directory's embedded catalog
    raise SystemExit(f"bluesky_ptycho: {err}") from None  # the session does not start half-made
RE.subscribe(catalog.writer)
db = catalog.databroker  # databroker's API over the scans: db[-1].table(), db[-1].derived
