"""``python -m scratchpilot``: the same as the ``scratchpilot`` command."""

import sys

from scratchpilot.cli import main

sys.exit(main())
