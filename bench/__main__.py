"""``python -m bench run|runs-for|table|show|compare|rank|forget|merge|list|plot|timing|data ...``
(see bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
