"""The ``iclm`` console script.

Subcommands are registered in :data:`COMMANDS` as ``name -> (help, add_arguments, run)``;
adding one (e.g. ``experiment``) means writing those two functions and one entry here.
``run(args)`` returns an exit code; ValueError, FileNotFoundError (and the other "bad path" errors:
FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) and MemoryError become a one-line error.
Commands in :data:`FORWARDING` take no options of their own: every argument after their name is left
to them in ``args.forwarded`` (``iclm lm-eval ...`` hands it to lm-eval's own command line).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from iclm import bench
from iclm.experiment import command as experiment
from iclm.experiment import continual, interventions, pretraining
from iclm.tasks import prepare

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A forwarding command declares nothing: its arguments belong to the tool it forwards to."""


def _run_lm_eval(args: argparse.Namespace) -> int:
    """lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) with the ``iclm`` model class registered.

    It reads ``sys.argv``, so that is set to ``lm-eval <forwarded>`` for the call and restored after.
    Its argparse exits (``-h``, bad options) propagate as ``SystemExit``, like ``iclm``'s own.
    """
    try:
        import iclm.lm_eval  # noqa: F401  (registers the "iclm" model class)
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        raise ValueError(f"`iclm lm-eval` needs lm-eval (pip install 'lm-eval>=0.4.13,<0.5'): {error}") from error
    _check_lm_eval_model(args.forwarded)
    saved = sys.argv
    sys.argv = ["lm-eval", *args.forwarded]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def _option(forwarded: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among lm-eval's arguments (the last one given)."""
    found = None
    for index, item in enumerate(forwarded):
        if item == name and index + 1 < len(forwarded):
            found = forwarded[index + 1]
        elif item.startswith(name + "="):
            found = item[len(name) + 1:]
    return found


def _check_lm_eval_model(forwarded: Sequence[str]) -> None:
    """Before lm-eval starts: a ``pretrained=`` folder that does not exist is named (not taken for a Hub id), and
    lm-eval's stock ``hf`` class on an ICLM gets a warning (it scores rows without a mask or labels, so the router
    reads the padding and the candidate answer: scores that depend on the batch)."""
    from iclm.sources import read_model_config, resolve_model_source

    model_args = _option(forwarded, "--model_args") or ""
    pretrained = None
    if not model_args.lstrip().startswith("{"):
        for part in model_args.split(","):
            key, _, value = part.partition("=")
            if key.strip() == "pretrained" and value.strip():
                pretrained = value.strip()
    if pretrained is None:
        return
    source = resolve_model_source(pretrained, option="--model_args pretrained")
    model = _option(forwarded, "--model") or "hf"
    if model in ("hf", "hf-auto", "huggingface"):
        config = read_model_config(source, option="--model_args pretrained") if os.path.isdir(source) else None
        if (config or {}).get("model_type") == "iclm":
            print(f"iclm lm-eval: warning: --model {model} on the ICLM {pretrained}: lm-eval's {model} class scores "
                  "rows without a mask or labels, so the router reads the padding and the candidate answer and a "
                  "score depends on its batch. Use --model iclm (same arguments).", file=sys.stderr)


COMMANDS: dict[str, Command] = {
    "data": ("prepare the ACRE/RAVEN benchmark as a DatasetDict on disk", prepare.add_arguments, prepare.run),
    "experiment": ("train and evaluate base, LoRA and ICLM systems in and out of distribution",
                   experiment.add_arguments, experiment.run),
    "continual": ("continual learning beyond the paper: add a domain module for a new distribution (old ones frozen) "
                  "vs a single LoRA and an unfrozen ICLM trained further; before/after accuracy, forgetting, routing "
                  "retention, verdicts", continual.add_arguments, continual.run),
    "interventions": ("intervene on a trained ICLM's modules (force each domain module, ablate the domain or the "
                      "invariant module): per split, how often the greedy answer changes",
                      interventions.add_arguments, interventions.run),
    "pretrain": ("pretrain the experiment's stand-in base on the skills corpus (resumable, in pieces; GPU with "
                 "--device cuda)", pretraining.add_arguments, pretraining.run),
    "bench": ("measure ICLM's training step, generation and memory against one PEFT LoRA model (ratios, JSON last)",
              bench.add_arguments, bench.run),
    "lm-eval": ("run lm-evaluation-harness (all arguments forwarded to `lm-eval`) with the `iclm` model class "
                "registered: iclm lm-eval --model iclm --model_args pretrained=DIR --tasks ...",
                _no_arguments, _run_lm_eval),
}
FORWARDING = {"lm-eval"}
# Errors that describe the user's input (a bad option, path or data file): one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               MemoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclm", description="Independent Causal Language Models tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        # A forwarding command leaves -h/--help to the tool it forwards to.
        subparser = subparsers.add_parser(name, help=help_text, description=help_text,
                                          add_help=name not in FORWARDING)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in FORWARDING:
        args.forwarded = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        print(f"iclm {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
