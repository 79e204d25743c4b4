# Every run (raw, and those the stages derive) is stored in the catalog.
import os

from bluesky_ptycho.storage.catalog import Catalog

catalog = Catalog(
    os.environ.get("BLUESKY_PTYCHO_CATALOG"), api_key=os.environ.get("BLUESKY_PTYCHO_API_KEY")
)
RE.subscribe(catalog.writer)
db = catalog.databroker  # databroker's API: db[-1].table()
