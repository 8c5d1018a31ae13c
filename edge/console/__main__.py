"""python -m edge.console: the same as the edge-console command."""

import sys

from edge.console.cli import main

sys.exit(main())
