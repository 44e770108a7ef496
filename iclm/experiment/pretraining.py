"""``iclm pretrain``: the stand-in base's reproducible, resumable pretraining on the skills corpus.

The stand-in is a tiny ``LlamaForCausalLM`` (CPU-sized) pretrained on :mod:`iclm.experiment.skills_corpus`, so that
fine-tuning in ``iclm experiment`` only has to learn the task. Pretraining runs for hours, in pieces: every
``--save-every`` steps the folder is rewritten (atomically) with the model, its tokenizer, the optimizer state and
the position in the corpus, all as safetensors + JSON, and ``--resume`` continues bit for bit where it stopped (the
corpus is indexed, the data order is a function of the step). The folder is the base ``iclm experiment`` loads: it
never pretrains at run time. On a GPU: ``--device cuda --dtype bfloat16`` (autocast; the weights stay float32).

The folder's ``pretraining.json`` records the recipe, the loss curve and the probe accuracies (held-out skill
questions) against CPU-minutes; its README is the card.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors.torch import load_file, save_file

from iclm.experiment import skills_corpus

STATE_FILE = "pretraining.json"
OPTIMIZER_FILE = "optimizer.safetensors"
PROBE_SEED = 1_000_003  # held-out documents: a seed the training stream never uses
TOKENIZER_SEED = 7


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a pretraining run (recorded in ``pretraining.json``)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    vocab_size: int = 1024
    seq_len: int = 512
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    total_steps: int = 20_000  # the cosine schedule's length; a run may stop (and resume) before
    weight_decay: float = 0.01
    # Loss weight of the tokens outside trained segments (contexts, questions): the base learns the renderings' text
    # (an untrained output such as "0" after "-> " is one LoRA cannot create in a few hundred steps), while the skill
    # answers (weight 1) keep most of the gradient.
    context_weight: float = 0.25
    seed: int = 0

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name not in ("weight_decay", "seed", "context_weight") and not value > 0:
                raise ValueError(f"Recipe.{field.name} must be positive, got {value}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads}).")
        if not 0 <= self.context_weight <= 1:
            raise ValueError(f"Recipe.context_weight must lie in [0, 1], got {self.context_weight}.")


def build_tokenizer(recipe: Recipe):
    """A byte-level BPE with whole numbers as pieces, trained on corpus documents and the benchmark's training
    prompts (so every rendering's words are pieces; o.o.d. text still tokenises, byte by byte at worst)."""
    from iclm.experiment.default_base import train_tokenizer, training_texts

    texts = training_texts() + [skills_corpus.text_of(skills_corpus.document(TOKENIZER_SEED, i)) for i in range(4000)]
    tokenizer = train_tokenizer(texts, recipe.vocab_size, whole_numbers=True)
    tokenizer.model_max_length = recipe.max_position_embeddings
    return tokenizer


def encode(document: skills_corpus.Document, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of one document (+ eos) and which of them are trained skill answers (the rest are context)."""
    ids, trained = [], []
    for text, is_trained in document:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += pieces
        trained += [is_trained] * len(pieces)
    return ids + [tokenizer.eos_token_id], trained + [False]


def batches(recipe: Recipe, tokenizer, start_document: int) -> Iterator[tuple[dict, int]]:
    """Rows of ``seq_len`` packed with whole documents in corpus order; yields (batch, next document index).

    ``weights`` is each target token's loss weight: 1 for skill answers, ``recipe.context_weight`` for the rest, 0 for
    padding (a row's targets are its tokens shifted by one)."""
    index = start_document
    pending: Optional[tuple[list[int], list[bool]]] = None
    while True:
        rows_ids, rows_weights = [], []
        for _ in range(recipe.batch_size):
            ids, trained = [], []
            while True:
                if pending is None:
                    pending = encode(skills_corpus.document(recipe.seed, index), tokenizer)
                    index += 1
                doc_ids, doc_trained = pending[0][-recipe.seq_len:], pending[1][-recipe.seq_len:]
                if ids and len(ids) + len(doc_ids) > recipe.seq_len:
                    break
                ids, trained, pending = ids + doc_ids, trained + doc_trained, None
            pad = recipe.seq_len - len(ids)
            rows_ids.append(ids + [tokenizer.pad_token_id] * pad)
            rows_weights.append([1.0 if t else recipe.context_weight for t in trained] + [0.0] * pad)
        # A document left pending starts the next batch: the stream position is that document's index, so a resumed
        # run starts where this one goes on.
        input_ids = torch.tensor(rows_ids)
        yield ({"input_ids": input_ids, "weights": torch.tensor(rows_weights),
                "attention_mask": (torch.tensor(rows_weights) > 0).long()}, index - (pending is not None))


def weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy weighted per target token (the weights of positions 1..T)."""
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                                               reduction="none")
    target_weights = weights[:, 1:].flatten()
    return (losses * target_weights).sum() / target_weights.sum().clamp(min=1e-8)


def learning_rate(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.total_steps - recipe.warmup_steps))
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def probe_documents(count: int) -> list[skills_corpus.Document]:
    return [skills_corpus.document(PROBE_SEED, i) for i in range(count)]


@torch.no_grad()
def probe(model, tokenizer, documents, device="cpu") -> dict:
    """Accuracy of the greedy next token on the held-out documents' trained tokens, by document kind, and on
    yes/no answers by ACRE skill: what the card reports and the test re-measures."""
    model.eval()
    hits: dict[str, list[int]] = {}
    for document in documents:
        ids, trained = encode(document, tokenizer)
        inputs = torch.tensor([ids], device=device)
        predicted = model(input_ids=inputs).logits[0, :-1].argmax(-1).tolist()
        for position, (target, is_trained) in enumerate(zip(ids[1:], trained[1:])):
            if is_trained:
                hits.setdefault(document.kind, []).append(int(predicted[position] == target))
    return {kind: sum(values) / len(values) for kind, values in sorted(hits.items())}


def _model(recipe: Recipe, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def _optimizer(model, recipe: Recipe):
    return torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98),
                             weight_decay=recipe.weight_decay)


def _save_optimizer(optimizer, path: Path) -> None:
    """AdamW's moments and step counts as safetensors, keyed ``<parameter index>.<name>`` in parameter order."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = {}
    for index, param in enumerate(params):
        for name, value in optimizer.state.get(param, {}).items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().float().cpu().contiguous()
    save_file(tensors, str(path))


def _load_optimizer(optimizer, path: Path) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in load_file(str(path)).items():
        index, name = key.split(".", 1)
        param = params[int(index)]
        optimizer.state[param][name] = value if name == "step" else value.to(param.device, param.dtype)


def _save(folder: Path, model, tokenizer, optimizer, record: dict) -> None:
    """Write the whole folder through the model files' crash-safe staging (a kill mid-save loses nothing)."""
    from saving_iclm import atomic_directory

    with atomic_directory(folder) as staging:
        staging = Path(staging)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if optimizer is not None:
            _save_optimizer(optimizer, staging / OPTIMIZER_FILE)
        (staging / STATE_FILE).write_text(json.dumps(record, indent=2))
        (staging / "README.md").write_text(card(record))


def card(record: dict) -> str:
    recipe = record["recipe"]
    last = record["probes"][-1] if record["probes"] else {"step": 0, "accuracy": {}}
    probes = ", ".join(f"{kind} {value:.3f}" for kind, value in last["accuracy"].items())
    return f"""# iclm stand-in base (CPU-sized, pretrained on skills)

A {record['parameters']:,}-parameter `LlamaForCausalLM` ({recipe['num_layers']} layers, hidden {recipe['hidden_size']},
{recipe['num_heads']} heads, a {record['vocab_size']}-token byte-level BPE with whole numbers as pieces), pretrained by
`iclm pretrain` (`iclm/experiment/pretraining.py`) on the skills corpus of `iclm/experiment/skills_corpus.py`:
generated ACRE contexts of the training distribution with auxiliary lookup questions (seen with the light off /
on / alone with the light on), generated RAVEN center_single problems with row continuation (panels 3 and 6) and
candidate matching, and key-value recall. No real val/test problem, no o.o.d. configuration and no task query is in
it; the skill answers weigh 1 in the loss and every other token {recipe['context_weight']} (the renderings' text,
context trials' outcomes included). **A CPU stand-in for a real LLM, not an LLM.**

* steps: {record['step']:,} of batch {recipe['batch_size']} × {recipe['seq_len']} tokens ({record['documents']:,} documents)
* compute: {record['cpu_minutes']:.1f} CPU-minutes of pretraining ({record['device']}, torch threads {record['threads']})
* weighted loss: {record['losses'][-1][1] if record['losses'] else float('nan'):.4f} (last logged, mean of 50 steps)
* probe accuracy at step {last['step']} on {record['probe_documents']} held-out documents: {probes}
* seed {recipe['seed']}; recipe: `{json.dumps(recipe)}`

Resume with `iclm pretrain --out <this folder> --resume --steps N`.
"""


def pretrain(out: str, steps: int, recipe: Recipe = Recipe(), resume: bool = False, device: str = "cpu",
             dtype: str = "float32", save_every: int = 250, probe_every: int = 250, probe_count: int = 64,
             max_minutes: Optional[float] = None, log=print) -> dict:
    """Train until ``steps`` total optimizer steps (or ``max_minutes`` of this piece); returns the record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(out)
    if resume:
        if not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no pretraining state ({STATE_FILE}); run without --resume "
                                    f"to start one.")
        record = json.loads((folder / STATE_FILE).read_text())
        recipe = Recipe(**record["recipe"])
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty: pass --resume to continue its pretraining or name a new "
                                  f"folder.")
        torch.manual_seed(recipe.seed)
        random.seed(recipe.seed)
        tokenizer = build_tokenizer(recipe)
        model = _model(recipe, tokenizer)
        record = {"recipe": asdict(recipe), "step": 0, "documents": 0, "cpu_minutes": 0.0, "losses": [],
                  "probes": [], "parameters": model.num_parameters(), "vocab_size": len(tokenizer),
                  "probe_documents": probe_count, "device": device, "threads": torch.get_num_threads()}
    model.to(device).train()
    optimizer = _optimizer(model, recipe)
    if resume and (folder / OPTIMIZER_FILE).is_file():
        _load_optimizer(optimizer, folder / OPTIMIZER_FILE)
    record.update(device=device, threads=torch.get_num_threads())
    probes = probe_documents(probe_count)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype),
                              enabled=dtype != "float32")
    stream = batches(recipe, tokenizer, record["documents"])
    started, cpu_started, window = time.time(), time.process_time(), []

    def checkpoint():
        record["cpu_minutes"] += (time.process_time() - checkpoint.cpu) / 60
        checkpoint.cpu = time.process_time()
        model.eval()
        _save(folder, model, tokenizer, optimizer, record)
        model.train()
    checkpoint.cpu = cpu_started

    while record["step"] < steps:
        batch, next_document = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, record["step"])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = weighted_loss(logits, batch["input_ids"], batch["weights"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record["step"] += 1
        record["documents"] = next_document
        window.append(loss.item())
        if record["step"] % 50 == 0:
            record["losses"].append([record["step"], sum(window) / len(window)])
            window = []
            log(f"step {record['step']}: loss {record['losses'][-1][1]:.4f} "
                f"({time.time() - started:.0f} s this piece)")
        if record["step"] % probe_every == 0 or record["step"] == steps:
            accuracy = probe(model, tokenizer, probes, device)
            model.train()
            minutes = record["cpu_minutes"] + (time.process_time() - checkpoint.cpu) / 60
            record["probes"].append({"step": record["step"], "cpu_minutes": round(minutes, 2), "accuracy": accuracy})
            log(f"probe at step {record['step']} ({minutes:.1f} CPU-min): {accuracy}")
        out_of_time = max_minutes is not None and time.time() - started > max_minutes * 60
        if record["step"] % save_every == 0 or record["step"] == steps or out_of_time:
            checkpoint()
        if out_of_time:
            log(f"Stopped after {max_minutes} minutes at step {record['step']}; resume with --resume.")
            break
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the base's folder (written atomically at every save)")
    parser.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach (not this piece's)")
    parser.add_argument("--resume", action="store_true", help="continue the folder's pretraining where it stopped")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="autocast dtype (the weights stay float32)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--probe-every", type=int, default=250)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop this piece after so many minutes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--total-steps", type=int, default=Recipe.total_steps, help="the LR schedule's length")
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--context-weight", type=float, default=Recipe.context_weight,
                        help="loss weight of context tokens (skill answers weigh 1)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(total_steps=args.total_steps, batch_size=args.batch_size, context_weight=args.context_weight)
    pretrain(args.out, args.steps, recipe, resume=args.resume, device=args.device, dtype=args.dtype,
             save_every=args.save_every, probe_every=args.probe_every, max_minutes=args.max_minutes)
    return 0
