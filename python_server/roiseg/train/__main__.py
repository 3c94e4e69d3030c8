"""`python -m roiseg.train`: `roiseg train`, as the default model's card records it."""

import sys

from roiseg.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
