"""`python -m sandbox check`: which sandbox model code gets here, and what it holds (sandbox/check.py)."""

import sys

from sandbox.check import main

sys.exit(main(sys.argv[1:]))
