"""`python -m lab ...`: what `scripts/lab` runs."""

import sys

from lab.commands import main

sys.exit(main(sys.argv[1:]))
