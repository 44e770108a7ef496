"""The shipped stand-in base: a tiny Llama pretrained by ``iclm pretrain`` on the skills corpus, committed in
``iclm/data/stand_in`` and loaded as it is (the main job never pretrains at run time)."""

from __future__ import annotations

import json
from pathlib import Path

from . import skills_corpus
from .pretraining import STATE_FILE

FOLDER = Path(__file__).resolve().parent.parent / "data" / "stand_in"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", STATE_FILE, "README.md")


def stand_in_base(folder: Path = FOLDER) -> tuple[str, dict]:
    """The folder of the shipped stand-in and its pretraining record, or a clear error naming the fix."""
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The shipped stand-in base in {folder} lacks {', '.join(missing)}. Reinstall iclm, or rebuild it with "
            f"`iclm pretrain --out {folder} --steps N` (hours on a CPU; see its README), or pass --base-model.")
    return str(folder), json.loads((folder / STATE_FILE).read_text())


def describe(record: dict) -> str:
    last = record["probes"][-1]["accuracy"] if record["probes"] else {}
    probes = ", ".join(f"{kind} {value:.2f}" for kind, value in last.items())
    return (f"shipped stand-in: a {record['parameters'] / 1e6:.2f}M-parameter Llama pretrained by `iclm pretrain` for "
            f"{record['step']:,} steps ({record['cpu_minutes']:.0f} CPU-minutes) on the skills corpus (ACRE lookups, "
            f"RAVEN row continuation and matching, recall; probe accuracy {probes}) — a CPU stand-in for a real LLM")


def corpus_leakage(record: dict, test_contexts: set) -> dict:
    """How many of the documents the stand-in was pretrained on show a test problem's context: every document is
    regenerated from the corpus seed (ACRE contexts by the generator's key against the real val/test files; RAVEN
    by the eight context panels against the experiment's test rows)."""
    from iclm.tasks.acre_generator import real_context_keys

    acre_real = real_context_keys()
    raven_tests = {key for task, key in test_contexts if task == "raven"}
    counts = {"documents": record["documents"], "acre_contexts_of_a_real_val_or_test_problem": 0,
              "raven_contexts_of_a_test_problem": 0}
    for index in range(record["documents"]):
        document = skills_corpus.document(record["recipe"]["seed"], index)
        if document.kind == "acre" and document.context in acre_real:
            counts["acre_contexts_of_a_real_val_or_test_problem"] += 1
        elif document.kind == "raven" and document.context in raven_tests:
            counts["raven_contexts_of_a_test_problem"] += 1
    return counts
