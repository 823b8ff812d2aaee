"""`python -m node` runs the c0 command line."""

import sys

from node.cli import main

sys.exit(main())
