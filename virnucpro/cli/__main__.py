"""`python -m virnucpro.cli`: the same command line as `virnucpro-slurm`."""

import sys

from . import main

sys.exit(main())
