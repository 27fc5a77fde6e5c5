"""`python -m medjax ...` is the `medjax` command."""

import sys

from medjax.cli import main

sys.exit(main())
