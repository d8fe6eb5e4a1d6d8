"""``python -m bench run|table|list|runs-for|plot|timing|data ...`` (see bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
