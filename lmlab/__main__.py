"""`python -m lmlab` (and `torchrun -m lmlab ...`) runs the CLI."""

import sys

from lmlab.cli import main

sys.exit(main())
