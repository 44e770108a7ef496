"""``iclm data``: build the benchmark, save it with ``DatasetDict.save_to_disk`` and describe it.

The description (rows, generated rows, answer balance and, given a tokenizer, token lengths of
``prompt + answer + eos`` and how many rows exceed ``--max-length``) is what one checks before
spending compute: e.g. that the RAVEN prompts fit the model's context.

``--out`` must be a new or empty folder, or an earlier ``iclm data`` output (a folder holding
only a saved ``DatasetDict``), which is replaced whole once the new benchmark is built; an
existing file, or a folder holding anything else, is refused before anything is built. Every
argument is checked before the benchmark is built.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any, Optional

from .benchmark import DEFAULT_RAVEN_GENERATED, DEFAULT_VALIDATION_FRACTION
from .records import RENDERINGS, TASKS

STATS_BATCH = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="folder to write the DatasetDict to (save_to_disk): a new or empty folder, or an earlier "
                             "`iclm data` output, which is replaced; an existing file or any other folder is refused")
    parser.add_argument("--tokenizer", help="local tokenizer folder, for token-length statistics")
    parser.add_argument(
        "--raven-per-config",
        type=int,
        default=DEFAULT_RAVEN_GENERATED,
        help=f"generated problems per o.o.d. RAVEN configuration (default {DEFAULT_RAVEN_GENERATED})",
    )
    parser.add_argument(
        "--raven-train-generated", type=int, default=0, help="generated center_single problems added to RAVEN train"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out, subsets and generation")
    parser.add_argument(
        "--limit-per-split", type=int, help="keep at most this many rows per split (stratified by answer)"
    )
    parser.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--renderings", nargs="+", choices=RENDERINGS, default=list(RENDERINGS))
    parser.add_argument(
        "--max-length", type=int, default=512, help="token budget to check rows against (with --tokenizer)"
    )


def token_lengths(dataset: Any, collator: Any) -> list[int]:
    """Tokens of ``prompt + answer (+eos)`` for every row, as the collator would build them."""
    lengths = []
    for start in range(0, len(dataset), STATS_BATCH):
        chunk = dataset[start : start + STATS_BATCH]
        lengths += [len(p) + len(a) for p, a in collator.encode(chunk["prompt"], chunk["answer"])]
    return lengths


def describe(benchmark: Any, collator: Optional[Any] = None) -> list[dict]:
    """One dict per split: rows, generated rows, answer balance, token-length statistics."""
    table = []
    for name, dataset in benchmark.items():
        answers = Counter(dataset["answer"])
        entry = {
            "split": name,
            "rows": len(dataset),
            "generated": sum(dataset["generated"]),
            "balance": {answer: answers[answer] for answer in sorted(answers)},
        }
        if collator is not None and len(dataset):
            lengths = token_lengths(dataset, collator)
            entry.update(
                tokens_min=min(lengths),
                tokens_mean=mean(lengths),
                tokens_max=max(lengths),
                over_max_length=sum(length > collator.max_length for length in lengths),
            )
        table.append(entry)
    return table


def format_table(table: list[dict]) -> str:
    """A fixed-width text table of :func:`describe`'s output."""
    with_tokens = any("tokens_min" in entry for entry in table)
    header = ["split", "rows", "generated", "answer balance (%)"] + (
        ["tokens min/mean/max", "> max_length"] if with_tokens else []
    )
    lines = []
    for entry in table:
        total = max(entry["rows"], 1)
        balance = " ".join(f"{answer}:{100 * count / total:.0f}" for answer, count in entry["balance"].items())
        cells = [entry["split"], str(entry["rows"]), str(entry["generated"]), balance]
        if with_tokens:
            tokens = (
                f"{entry['tokens_min']}/{entry['tokens_mean']:.0f}/{entry['tokens_max']}"
                if "tokens_min" in entry
                else "-"
            )
            cells += [tokens, str(entry.get("over_max_length", "-"))]
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    render = lambda cells: "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * width for width in widths])] + [render(cells) for cells in lines])


def _collator(path: str, max_length: int):
    from transformers import AutoTokenizer

    from .collator import AnswerOnlyCollator

    if not Path(path).is_dir():
        problem = "is a file, not a folder" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(
            f"Tokenizer folder {path} {problem}; --tokenizer takes a local folder (a save_pretrained output)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as error:
        raise ValueError(f"Could not load a tokenizer from {path}: {error}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Padding plays no part in lengths; training must still set a pad token (the collator says so).
        tokenizer.pad_token = tokenizer.eos_token
        print("note: the tokenizer has no pad token; using its eos token for these statistics.")
    return AnswerOnlyCollator(tokenizer, max_length=max_length)


def is_benchmark_folder(folder: Path) -> bool:
    """True if ``folder`` holds a saved ``DatasetDict`` and nothing else (what ``--out`` may replace)."""
    if not (folder / "dataset_dict.json").is_file():
        return False
    return all(entry.name == "dataset_dict.json" or (entry.is_dir() and (entry / "state.json").is_file())
               for entry in folder.iterdir())


def check_arguments(args: argparse.Namespace) -> tuple[Path, bool]:
    """Every argument, before anything is built: ``(out folder, whether it replaces an earlier output)``."""
    from ..sources import check_output_folder

    for name in ("raven_per_config", "raven_train_generated", "limit_per_split"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {value}.")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length must be a positive number of tokens, got {args.max_length}.")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in [0, 1) (the share of training problems held out), "
                         f"got {args.validation_fraction}.")
    return check_output_folder(args.out, "--out", reusable=is_benchmark_folder,
                               reuse="a folder holding only a saved DatasetDict, which is replaced")


def save(benchmark, out: Path, replace: bool) -> None:
    """``save_to_disk`` to ``out``; an earlier output there is replaced only once the new one is written."""
    if not replace:
        benchmark.save_to_disk(str(out))
        return
    staging = out.with_name(f".{out.name}.iclm-data-{os.getpid()}")
    try:
        benchmark.save_to_disk(str(staging))
        shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def run(args: argparse.Namespace) -> int:
    out, replace = check_arguments(args)
    collator = _collator(args.tokenizer, args.max_length) if args.tokenizer else None

    import datasets

    from .benchmark import load_benchmark

    datasets.disable_progress_bars()  # one table, not 20 progress bars
    benchmark = load_benchmark(
        tasks=args.tasks,
        renderings=args.renderings,
        limit_per_split=args.limit_per_split,
        raven_generated_per_config=args.raven_per_config,
        raven_train_generated=args.raven_train_generated,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    save(benchmark, out, replace)
    if replace:
        print(f"Replaced the earlier benchmark in {args.out}.")
    print(f"Saved {len(benchmark)} splits ({sum(len(d) for d in benchmark.values())} rows) to {args.out}")
    print(format_table(describe(benchmark, collator)))
    return 0
