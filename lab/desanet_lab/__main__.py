"""`python -m desanet_lab up|down|status|exec ...` (same as `desanet lab ...`)."""

import sys

from desanet_lab.cli import main

raise SystemExit(main(["lab", *sys.argv[1:]]))
