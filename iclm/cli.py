"""The ``iclm`` console script.

Subcommands are registered in :data:`COMMANDS` as ``name -> (help, add_arguments, run)``;
adding one (e.g. ``experiment``) means writing those two functions and one entry here.
``run(args)`` returns an exit code; ValueError/FileNotFoundError become a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from iclm.experiment import command as experiment
from iclm.tasks import prepare

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "data": ("prepare the ACRE/RAVEN benchmark as a DatasetDict on disk", prepare.add_arguments, prepare.run),
    "experiment": ("train and evaluate base, LoRA and ICLM systems in and out of distribution",
                   experiment.add_arguments, experiment.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclm", description="Independent Causal Language Models tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, MemoryError) as error:
        print(f"iclm {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
