"""The `roiseg` command: serve, models, segment, train, evaluate, compare, effort, batch, submit,
precision.

One module per command, each with `HELP`, `add_arguments(parser)` (argument parsing only) and
`run(args)`, which imports its engine when it runs: `roiseg --help`, a command's `--help` and
argument errors never import torch. Errors a user can fix end as one line and exit status 2,
here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from roiseg import __version__
from roiseg.cli import (
    batch,
    compare,
    effort,
    evaluate,
    models,
    precision,
    segment,
    serve,
    submit,
    train,
)

#: The subcommands in the order `roiseg --help` lists them.
COMMANDS: dict[str, ModuleType] = {"serve": serve, "models": models, "segment": segment,
                                   "train": train, "evaluate": evaluate, "compare": compare,
                                   "effort": effort, "batch": batch, "submit": submit,
                                   "precision": precision}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `roiseg ARGV`; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.command.run(args)
    except Exception as error:  # noqa: BLE001 - sorted below; anything else propagates
        if not _is_user_error(error):
            raise
        print(f"roiseg {args.command_name}: error: {error}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """The `roiseg` argument parser with every subcommand."""
    root = argparse.ArgumentParser(prog="roiseg", description=__doc__.split("\n\n")[0])
    root.add_argument("--version", action="version", version=f"roiseg {__version__}")
    subcommands = root.add_subparsers(required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = subcommands.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(command=module, command_name=name)
    return root


def _is_user_error(error: Exception) -> bool:
    """Whether `error` says what the user should change (a bad option, file, request or
    server answer), rather than a fault of roiseg's."""
    from roiseg.client.connection import SegmentationError
    from roiseg.errors import RoisegError

    return isinstance(error, (SegmentationError, RoisegError, ValueError))
