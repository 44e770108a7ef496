"""Exact-match accuracy of the greedy answer, per test split, with the project's local `evaluate` metric."""

from functools import lru_cache

import torch

from iclm.metrics import load_metric
from iclm.tasks import AnswerOnlyCollator
from iclm.terminal import progress
from modeling_iclm import IclmForCausalLM


@torch.no_grad()
def generate_answers(model, tokenizer, rows, *, batch_size: int, max_new_tokens: int, max_length: int,
                     module=None, oracle: bool = False, force: int | None = None, desc: str = "generate") -> list[str]:
    """Greedy continuations of each row's prompt (left-padded batches, KV cache). An ICLM runs ``module=``, the
    rows' own domain ids with ``oracle``, or domain module ``force`` for every row (counterfactual routing)."""
    collator = AnswerOnlyCollator(tokenizer, max_length=max_length, return_prompt_only=True)
    extra = {}
    if isinstance(model, IclmForCausalLM) and module is not None:
        extra["module"] = module
    device = next(model.parameters()).device
    # Batches of similar prompt lengths waste little compute on padding (ACRE and RAVEN prompts differ 2-4x within
    # a split); the answers come back in the rows' order.
    order = sorted(range(len(rows)), key=lambda index: len(rows[index]["prompt"]))
    answers: list[str] = [""] * len(rows)
    for start in progress(range(0, len(rows), batch_size), desc, level=1):
        chunk = [rows[index] for index in order[start : start + batch_size]]
        batch = collator(chunk)
        kwargs = dict(extra)
        if oracle:
            kwargs["domain_ids"] = batch["domain_ids"].to(device)
        input_ids = batch["input_ids"].to(device)
        if force is not None:
            kwargs["domain_ids"] = torch.full((len(input_ids),), force, dtype=torch.long, device=device)
        output = model.generate(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **kwargs)
        decoded = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        for index, answer in zip(order[start : start + batch_size], decoded):
            answers[index] = answer
    return answers


@lru_cache(maxsize=1)
def _exact_match():
    return load_metric("exact_match_accuracy")


def split_accuracy(rows, predictions: list[str]) -> dict:
    """The exact-match metric (loaded once from its local folder) with chance and majority baselines."""
    metric = _exact_match()
    scores = metric.compute(predictions=predictions, references=[r["answer"] for r in rows],
                            choices=[r["choices"] for r in rows], tasks=[r["task"] for r in rows])
    return {key: scores[key] for key in ("accuracy", "chance", "majority", "count")}


def answer_token_budget(tokenizer, rows, floor: int = 3) -> int:
    """New tokens to generate: room for the longest choice in this tokenizer (+ one, for eos), at least ``floor``
    ("undetermined" is one token in the default base's tokenizer, several in Llama's)."""
    choices = sorted({choice for row in rows for choice in row["choices"]})
    return max(floor, max(map(len, tokenizer(choices, add_special_tokens=False)["input_ids"])) + 1)


def evaluate_system(model, tokenizer, test_sets: dict, preset, *, module=None, oracle=False, name="") -> dict:
    """{split: accuracy, chance, majority, count, predictions (first 5)} over every test split."""
    results = {}
    for split, rows in test_sets.items():
        predictions = generate_answers(model, tokenizer, rows, batch_size=preset.eval_batch_size,
                                       max_new_tokens=answer_token_budget(tokenizer, rows, preset.max_new_tokens),
                                       max_length=preset.eval_max_length,
                                       module=module, oracle=oracle, desc=f"{name} {split}")
        results[split] = {**split_accuracy(rows, predictions), "examples": predictions[:5]}
    return results


@torch.no_grad()
def answer_token_accuracy(model, tokenizer, rows, *, batch_size: int, max_length: int, module=None,
                          oracle: bool = False) -> float:
    """Share of rows whose answer's first token is the model's greedy (argmax) next token after the prompt.

    One forward pass per batch, no generation: the learning curves' cheap accuracy. Rows are collated as in
    training (right padding, answer-only labels, so an ICLM routes on the prompt alone). With one-token answers
    (the embedded base's tokenizer) it is the greedy exact match; with multi-token answers it checks the first.
    """
    collator = AnswerOnlyCollator(tokenizer, max_length=max_length, padding_side="right", add_eos=False,
                                  min_prompt_tokens=0, on_too_long="error")
    extra = {"module": module} if isinstance(model, IclmForCausalLM) and module is not None else {}
    device = next(model.parameters()).device
    hits = 0
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        kwargs = dict(extra)
        if oracle:
            kwargs["domain_ids"] = batch["domain_ids"].to(device)
        labels = batch["labels"]
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       labels=labels.to(device), **kwargs).logits
        first = (labels != -100).int().argmax(1)  # the first answer token of each row
        index = torch.arange(len(first))
        predicted = logits[index, (first - 1).to(logits.device)].argmax(-1).cpu()
        hits += int((predicted == labels[index, first]).sum())
    return hits / max(len(rows), 1)
