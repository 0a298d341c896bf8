"""`python -m gateway.lab up|down|status|exec ...` (same as `desanet lab ...`)."""

import sys

from gateway.lab.cli import main

raise SystemExit(main(["lab", *sys.argv[1:]]))
