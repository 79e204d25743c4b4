"""``python -m bluesky_ptycho.cli``: the same as the ``bluesky-ptycho`` command."""

import sys

from bluesky_ptycho.cli import main

sys.exit(main())
