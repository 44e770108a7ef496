"""The embedded default base model: a tiny Llama pretrained on the benchmark's training text, offline.

``iclm experiment`` needs a causal LM to put LoRA/ICLM modules on. When the user names none, this
module builds a small stand-in on the CPU, with no network: a BPE tokenizer trained with
``tokenizers`` and a ``LlamaForCausalLM`` of up to a few million parameters pretrained briefly with
the causal-LM loss on the training rows only (prompt + answer + eos, never test data). It is a
stand-in for a real LLM, so that the whole experiment runs end to end on a laptop; its numbers say
nothing about what a pretrained LLM would do, and its folder's README says so.

The result is cached: the folder's name is a hash of the spec, of the texts and of the library
versions, so the same inputs reuse the folder and any change rebuilds it. A build is written to a
temporary folder and renamed into place only when complete, so an interrupted build is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainerCallback,
                          TrainingArguments, set_seed)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# A word or punctuation run keeps the whitespace that follows it and every digit is its own piece.
# The prompts end with whitespace ("... is ", "... -> "), so a prompt and its answer tokenise the same
# apart as together: the answer never merges with the prompt, "[12, 5] -> 2" reads "[ 1 2 ,␣ 5 ]␣ ->␣ 2".
PRE_TOKENIZER_PATTERN = r"\p{L}+\s*|\p{N}\s*|[^\p{L}\p{N}\s]+\s*|\s+"
# The same with whole numbers as pieces: "[12, 5] -> 2" reads "[ 12,␣ 5 ]␣ ->␣ 2", so an ACRE object id (0-47) is one
# token and finding it again in the context is a one-token match (the answers stay single tokens).
WHOLE_NUMBERS_PATTERN = r"\p{L}+\s*|\p{N}+\s*|[^\p{L}\p{N}\s]+\s*|\s+"
DATA_SOURCE = "the training splits of ACRE IID and RAVEN center_single only"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                  "pretraining.json")
FORMAT_VERSION = 1  # bump when a change to this module changes what a build produces


def _check_vocab_size(vocab_size: int) -> None:
    minimum = 256 + len(SPECIAL_TOKENS)  # the byte alphabet + the special tokens
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + special tokens), got {vocab_size}.")


@dataclass(frozen=True)
class DefaultBaseSpec:
    """Size and pretraining budget of the default base.

    ``vocab_size`` is the BPE target; the model's vocabulary is the tokenizer's real size, which is
    smaller when the training text has fewer distinct pieces (the benchmark's has ~600).
    ``seq_len`` is the length of the packed pretraining rows; ``max_position_embeddings`` only sizes
    the rotary cache (no parameters), so it is larger, to let long o.o.d. test prompts run.
    """

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    pretrain_steps: int = 500
    batch_size: int = 8
    learning_rate: float = 3e-3
    seq_len: int = 512
    seed: int = 0
    whole_numbers: bool = False  # tokenizer: numbers as one piece (WHOLE_NUMBERS_PATTERN), not digit by digit
    # Corpus recipe, read by the experiment runner (iclm.experiment.default_base.training_texts): generated ACRE
    # problems (training distribution, both renderings, a stream apart from the fine-tuning problems, none sharing
    # its context with a real val/test problem) added to the training splits' texts.
    generated_acre_problems: int = 0

    def __post_init__(self):
        _check_vocab_size(self.vocab_size)
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "pretrain_steps", "batch_size",
                     "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.generated_acre_problems < 0:
            raise ValueError(f"generated_acre_problems must not be negative, got {self.generated_acre_problems}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads}).")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len ({self.seq_len}) cannot exceed max_position_embeddings "
                             f"({self.max_position_embeddings}).")

    @classmethod
    def preset(cls, name: str) -> "DefaultBaseSpec":
        """``"smoke"`` (seconds, for tests) or ``"default"`` (a few minutes on 2 CPU cores)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown default-base preset {name!r}; expected one of {', '.join(PRESETS)}.")
        return PRESETS[name]

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # Builds in a few seconds: enough to exercise every code path, not to learn much.
    "smoke": DefaultBaseSpec(vocab_size=384, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=2048, pretrain_steps=30, batch_size=8, learning_rate=3e-3,
                             seq_len=128),
    # Measured on the benchmark's 16,200 training texts: 0.93M parameters (606-token vocabulary),
    # 500 steps of 8 x 512 tokens (~0.6 epoch) in ~4 min on one thread, final loss ~0.40; one
    # forward+backward of 8 x 256 tokens takes ~0.18 s on one thread, so the LoRA fine-tunes stay
    # cheap. lr 3e-3 beat 1e-3 and 6e-3; hidden 96 and 160 were no better at equal steps.
    "default": DefaultBaseSpec(),
}


def training_texts(generated_acre: int = 0) -> list[str]:
    """The embedded default base's pretraining corpus (never test data): every training row's prompt + answer
    and, with ``generated_acre``, that many generated ACRE problems (IID regime, both renderings, a stream of
    their own: purpose ``pretrain``, so not the fine-tuning problems; none shares its context with a real
    problem), each as one densely queried text (:func:`dense_problem_text`)."""
    from iclm.tasks import acre, load_task

    texts = [row["prompt"] + row["answer"] for task in ("acre", "raven") for rendering in ("text", "symbolic")
             for row in load_task(task, rendering, "train", seed=0)]
    if generated_acre:
        problems = acre.generated_problems(generated_acre, 0, purpose="pretrain")
        for rendering in ("text", "symbolic"):
            texts += [dense_problem_text(problem, rendering, seed=f"pretrain/{index}")
                      for index, problem in enumerate(problems)]
    return texts


def dense_problem_text(problem, rendering: str, seed: str = "") -> str:
    """One ACRE problem as one pretraining text: its prompt (instructions + 6 context trials), then its 4 queries
    and one query per context object, each line followed by its answer, in a seeded random order.

    The answers are what needs reasoning and the context is most of the tokens: ~10 answered queries per
    context instead of one. Every added label is derived from the context by the blicket solver
    (:func:`iclm.tasks.acre_generator.query_label`), which reproduces every label of the real files.
    """
    from iclm.tasks.acre import load_objects, problem_to_records
    from iclm.tasks.acre_generator import CONTEXT_TRIALS, query_label
    from iclm.tasks.records import evals_prompt

    context = list(problem[:CONTEXT_TRIALS])
    objects = sorted({obj for trial in context for obj in trial["objects"]})
    queries = list(problem[CONTEXT_TRIALS:]) + [
        {"light_state": "no", "objects": [obj], "label": query_label(context, [obj])} for obj in objects]
    random.Random(f"dense/{rendering}/{seed}").shuffle(queries)
    records = problem_to_records(context + queries, rendering, load_objects())
    text = evals_prompt(records[0]["input"], "dense") + str(records[0]["ideal"])
    for record in records[1:]:
        text += "\n" + record["input"][-1]["content"] + str(record["ideal"])
    return text


def _check_texts(texts: Iterable[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ValueError("No training texts: pass the prompt + answer strings of the training splits "
                         "(e.g. iclm.experiment.default_base.training_texts()).")
    bad = next((text for text in texts if not isinstance(text, str)), None)
    if bad is not None:
        raise ValueError(f"Training texts must be strings (prompt + answer), got a {type(bad).__name__}.")
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int, whole_numbers: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``.

    Byte-level, so no text is ever ``<unk>``; pre-tokenised by :data:`PRE_TOKENIZER_PATTERN`, so the
    benchmark answers ("on", "off", "undetermined", "0".."2", "A".."H") are single tokens whether
    tokenised alone or after their prompt. No special token is added automatically (``add_bos_token``
    is not restored by a reload in ``transformers``, so relying on it would make training and
    evaluation disagree); ``</s>`` ends every pretraining text and answer. ``whole_numbers`` keeps a number's
    digits together (:data:`WHOLE_NUMBERS_PATTERN`).
    """
    texts = _check_texts(texts)
    _check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WHOLE_NUMBERS_PATTERN if whole_numbers else PRE_TOKENIZER_PATTERN),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos,
                                   unk_token=unk, padding_side="right")


def pack(texts: Sequence[str], tokenizer, seq_len: int, seed: int) -> list[list[int]]:
    """Token rows of at most ``seq_len``: whole texts (+ eos), shuffled, packed greedily.

    Whole texts, so that every answer is seen after its entire prompt, as in fine-tuning; a text
    longer than ``seq_len`` keeps its end (the answer), like the collator's left cut.
    """
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    rows, current = [], []
    for index in order:
        sequence = (ids[index] + [tokenizer.eos_token_id])[-seq_len:]
        if len(current) + len(sequence) > seq_len:
            rows.append(current)
            current = []
        current.extend(sequence)
    rows.append(current)
    return rows


class _PackedRows:
    """The packed rows as a map-style dataset of right-padded tensors; padding is masked out of the loss."""

    def __init__(self, rows: list[list[int]], seq_len: int, pad_id: int):
        self.rows, self.seq_len, self.pad_id = rows, seq_len, pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        pad = self.seq_len - len(row)
        input_ids = torch.tensor(row + [self.pad_id] * pad)
        return {"input_ids": input_ids, "attention_mask": torch.tensor([1] * len(row) + [0] * pad),
                "labels": torch.tensor(row + [-100] * pad)}


def model_config(spec: DefaultBaseSpec, tokenizer) -> LlamaConfig:
    """The ``LlamaConfig`` of ``spec`` for ``tokenizer`` (tied embeddings: the vocabulary is tiny)."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def pretrain(texts: Sequence[str], spec: DefaultBaseSpec, tokenizer,
             callbacks: Sequence[TrainerCallback] = ()) -> LlamaForCausalLM:
    """A fresh ``LlamaForCausalLM`` trained for ``spec.pretrain_steps`` on the packed ``texts``.

    Uses ``transformers.Trainer`` on the CPU (the stand-in is meant to be the same wherever it is
    built), with a cosine schedule and no checkpoints; deterministic given ``spec.seed``. Pass
    ``TrainerCallback`` objects in ``callbacks`` to see the logged losses.
    """
    texts = _check_texts(texts)
    set_seed(spec.seed)
    model = LlamaForCausalLM(model_config(spec, tokenizer))
    dataset = _PackedRows(pack(texts, tokenizer, spec.seq_len, spec.seed), spec.seq_len, tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="iclm-pretrain-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=spec.pretrain_steps, per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=max(1, spec.pretrain_steps // 20), weight_decay=0.0, optim="adamw_torch",
            logging_steps=max(1, spec.pretrain_steps // 20), logging_first_step=True, save_strategy="no",
            report_to="none", use_cpu=True, seed=spec.seed, data_seed=spec.seed, dataloader_pin_memory=False,
            remove_unused_columns=False,
        )
        from trainer_iclm import quiet_progress

        quiet_progress(Trainer(model=model, args=args, train_dataset=dataset, callbacks=list(callbacks))).train()
    return model.eval()


def texts_digest(texts: Sequence[str]) -> str:
    """Order-sensitive SHA-256 of the texts (length-prefixed, so no two lists collide by joining)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "format": FORMAT_VERSION}


def cache_key(spec: DefaultBaseSpec, texts: Sequence[str]) -> str:
    """Hash of what determines a build: the spec, the texts and the library versions."""
    payload = {"spec": spec.to_dict(), "texts": texts_digest(texts), "versions": _versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_complete(path: Union[str, Path]) -> bool:
    """Whether ``path`` holds every file of a finished build."""
    return all((Path(path) / name).is_file() for name in REQUIRED_FILES)


class _LossLog(TrainerCallback):
    """Keeps the logged training losses as ``(step, loss)``, for the README and the tests."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


def _readme(spec: DefaultBaseSpec, record: dict) -> str:
    spec_lines = "\n".join(f"| {name} | {value} |" for name, value in spec.to_dict().items())
    return f"""# iclm embedded default base (CPU stand-in)

**CPU stand-in for a real LLM, pretrained on {DATA_SOURCE}.** A {record['parameters']:,}-parameter
`LlamaForCausalLM` with a {record['vocab_size']}-token byte-level BPE tokenizer, built offline by
`iclm.experiment.default_base` so that `iclm experiment` runs end to end without a downloaded model.
Results obtained with it say nothing about what a pretrained LLM would do.

Pretraining: causal-LM loss on {record['texts']} prompt + answer + eos texts packed whole into
rows of ≤ {spec.seq_len} tokens, {spec.pretrain_steps} steps of batch {spec.batch_size}, built in
{record['build_seconds']:.0f} s. First logged loss {record['first_loss']:.3f},
final loss **{record['final_loss']:.3f}**.

| spec | value |
|---|---|
{spec_lines}

Texts SHA-256: `{record['texts_sha256']}`; versions: {record['versions']}.
"""


def build_default_base(texts: Sequence[str], cache_dir: Union[str, Path], preset: str = "default",
                       spec: Optional[DefaultBaseSpec] = None, log: Callable[[str], None] = print) -> str:
    """The folder of the default base for ``texts``, built once and then reused.

    Args:
        texts: training rows as prompt + answer strings (training splits only: this is the base's
            whole pretraining corpus, and test text here would leak into every result).
        cache_dir: where built bases live, one sub-folder per cache key.
        preset: ``"smoke"`` or ``"default"``; ignored when ``spec`` is given.
        spec: an explicit :class:`DefaultBaseSpec`.
        log: called with one-line progress messages.

    Returns the absolute folder, loadable offline with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``.
    """
    texts = _check_texts(texts)
    spec = spec or DefaultBaseSpec.preset(preset)
    cache_dir = Path(cache_dir).expanduser().resolve()
    label = next((name for name, known in PRESETS.items() if known == spec), "custom")
    final = cache_dir / f"default-base-{label}-{cache_key(spec, texts)}"
    if is_complete(final):
        log(f"Reusing the embedded default base (CPU stand-in for a real LLM) in {final}.")
        return str(final)
    if final.exists():
        log(f"{final} is an incomplete build; rebuilding it.")
        shutil.rmtree(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"Building the embedded default base (CPU stand-in for a real LLM, {label} preset) from {len(texts)} "
        f"training texts into {final}…")
    started = time.time()
    tokenizer = train_tokenizer(texts, spec.vocab_size, whole_numbers=spec.whole_numbers)
    tokenizer.model_max_length = spec.max_position_embeddings
    losses = _LossLog()
    model = pretrain(texts, spec, tokenizer, callbacks=[losses])
    record = {
        "spec": spec.to_dict(), "parameters": model.num_parameters(), "vocab_size": len(tokenizer),
        "texts": len(texts), "texts_sha256": texts_digest(texts), "versions": _versions(),
        "build_seconds": time.time() - started,
        "first_loss": losses.losses[0][1], "final_loss": losses.losses[-1][1], "losses": losses.losses,
        "source": DATA_SOURCE,
    }
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / "pretraining.json").write_text(json.dumps(record, indent=2))
        (scratch / "README.md").write_text(_readme(spec, record))
        try:
            os.rename(scratch, final)
        except OSError:
            if not is_complete(final):  # not a concurrent build that finished first
                raise
            log(f"Another process finished {final} first; using it.")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"Built the default base in {record['build_seconds']:.0f} s: {record['parameters']:,} parameters, "
        f"final pretraining loss {record['final_loss']:.3f}.")
    return str(final)
