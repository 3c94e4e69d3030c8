"""`python -m roiseg.cli ...`, the same as `roiseg ...`."""

import sys

from roiseg.cli import main

sys.exit(main())
