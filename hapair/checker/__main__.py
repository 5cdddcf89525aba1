import sys

from hapair.checker.process import main

raise SystemExit(main(sys.argv[1:]))
