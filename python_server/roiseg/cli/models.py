"""`roiseg models`: list the models of a server, or of this machine."""

from __future__ import annotations

import argparse

from roiseg.cli import options

HELP = "list the models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model_arguments(parser)
    options.add_server_arguments(parser, "ask this server (HOST:PORT) instead")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from google.protobuf.json_format import MessageToDict

    from roiseg.client.connection import connect

    with connect(options.server_address(args), options.model_source(args)) as client:
        models = client.list_models()
    if args.json:
        print(json.dumps([MessageToDict(m) for m in models], indent=2))
        return 0
    for m in models:
        classes = ", ".join(c.name for c in m.classes)
        print(f"{m.id}  v{m.version}  {m.architecture}/{m.encoder}  {m.mpp:g} µm/px  "
              f"tile {m.tile_size}+{m.overlap}\n    {m.name}: {classes}")
    return 0
