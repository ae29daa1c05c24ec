"""``python -m vsr_fast``: the ``vsr-fast`` command line (vsr_fast.cli)."""

import sys

from .cli import main

sys.exit(main())
