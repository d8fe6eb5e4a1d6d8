"""``python -m bench run|table|list|data ...`` (see bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
