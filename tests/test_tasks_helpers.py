"""Shared helpers of the tests_tasks_* files: a tiny tokenizer trained in memory (nothing from the Hub)."""

from __future__ import annotations

from typing import Optional, Sequence

SPECIAL_TOKENS = ["<unk>", "<eos>", "<pad>", "<bos>"]


def tiny_tokenizer(texts: Sequence[str], pad: Optional[str] = "<pad>", vocab_size: int = 400):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (real merges, so token
    boundaries of prompt + answer matter, as with GPT-2-style tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>", pad_token=pad
    )


def benchmark_texts() -> list[str]:
    """Prompts and answers of a few rows of every task/rendering, to train the tiny tokenizer on."""
    from iclm.tasks import load_task

    texts = []
    for task, split in (("acre", "iid"), ("raven", "center_single")):
        for rendering in ("text", "symbolic"):
            rows = load_task(task, rendering, split, limit=12)
            texts += list(rows["prompt"]) + list(rows["answer"])
    return texts
