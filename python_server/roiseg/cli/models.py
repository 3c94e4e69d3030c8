"""`roiseg models`: list the models of a server, or of this machine."""

from __future__ import annotations

import argparse

from roiseg.cli import options

HELP = "list the models"
DESCRIPTION = """\
List the models (and their versions) of a server, or of this machine.

example:
  roiseg models --server gpu-box:50051"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model_arguments(parser)
    options.add_server_arguments(parser, "ask this server (HOST:PORT) instead")
    parser.add_argument("--json", action="store_true", help="print JSON")
    versions = parser.add_mutually_exclusive_group()
    versions.add_argument("--set-default", metavar="ID@VERSION",
                          help="make this version the one the model's id selects (with --server)")
    versions.add_argument("--retire", metavar="ID@VERSION",
                          help="stop serving this version (with --server)")


def run(args: argparse.Namespace) -> int:
    import json

    from google.protobuf.json_format import MessageToDict

    from roiseg.client.connection import Client, connect

    server = options.server_address(args)
    if (args.set_default or args.retire) and server is None:
        raise ValueError("--set-default and --retire change a running server: give --server")
    with connect(server, options.model_source(args)) as client:
        if isinstance(client, Client) and args.set_default:
            client.set_default_version(args.set_default)
        elif isinstance(client, Client) and args.retire:
            client.retire_version(args.retire)
        models = client.list_models()
    if args.json:
        print(json.dumps([MessageToDict(m) for m in models], indent=2))
        return 0
    for m in models:
        classes = ", ".join(c.name for c in m.classes)
        print(f"{m.id}  v{m.version}  {m.architecture}/{m.encoder}  {m.mpp:g} µm/px  "
              f"tile {m.tile_size}+{m.overlap}\n    {m.name}: {classes}")
        if len(m.versions) > 1:
            for v in m.versions:
                print(f"    {'*' if v.is_default_version else ' '} {v.id}"
                      + (f"  fine-tuned from {v.fine_tuned_from}" if v.fine_tuned_from else ""))
    return 0
