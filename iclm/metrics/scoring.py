"""Candidate scoring for choice accuracy: the summed log-probability of each candidate's tokens.

Candidates are tokenised exactly as in training (``AnswerOnlyCollator``: prompt and answer
tokenised separately, no eos), right-padded so that positions need no correction, and scored
with one forward pass per batch. The model is only assumed to take ``input_ids`` and
``attention_mask`` and to return ``.logits``.

When the model's ``forward`` takes ``labels`` (every 🤗 causal LM does), the answer-only labels
that mark the candidate are passed too. A plain LM only computes an unused loss from them; an
ICLM's router reads the attended tokens *before the first labelled one*, i.e. the prompt alone,
so every candidate of a prompt goes to the same domain module, as in generation. Without them
the router would read the candidate itself, and the candidates of one prompt would be scored by
different modules.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from iclm.tasks.collator import IGNORE_INDEX, AnswerOnlyCollator


def score_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    choices_list: Sequence[Sequence[str]],
    batch_size: int = 8,
    max_length: int = 2048,
) -> list[list[float]]:
    """For each prompt, the summed log-probability of each of its choices as a continuation.

    Raises ValueError if a prompt+choice does not fit in ``max_length`` (a score of a cut
    candidate would not be comparable).
    """
    import torch

    if len(prompts) != len(choices_list):
        raise ValueError(f"Got {len(prompts)} prompts but {len(choices_list)} choice lists.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    collator = AnswerOnlyCollator(
        tokenizer, max_length=max_length, padding_side="right", add_eos=False, min_prompt_tokens=0, on_too_long="error"
    )
    pairs = [(i, {"prompt": p, "answer": c}) for i, (p, cs) in enumerate(zip(prompts, choices_list)) for c in cs]
    scores: list[list[float]] = [[] for _ in prompts]
    device = next((parameter.device for parameter in getattr(model, "parameters", lambda: [])()), None)
    routed = hasattr(model, "route")
    pass_labels = routed or accepts_labels(model)  # a routed model always needs them: never read the candidate
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = collator([row for _, row in chunk])
            if collator.num_truncated:
                raise ValueError(
                    f"A prompt needed cutting to fit max_length={max_length}; raise max_length to score it whole."
                )
            keys = ("input_ids", "attention_mask") + (("labels",) if pass_labels else ())
            inputs = {key: batch[key].to(device) if device is not None else batch[key] for key in keys}
            if routed and pass_labels:
                prompt_tokens = (batch["labels"] == IGNORE_INDEX).logical_and(batch["attention_mask"].bool()).sum(1)
                if bool((prompt_tokens < 2).any()):
                    raise ValueError(
                        "A prompt of fewer than 2 tokens leaves a routed model (ICLM) nothing to route on without "
                        "reading the candidate; give each prompt at least 2 tokens."
                    )
            logits = model(**inputs).logits.float()
            labels = batch["labels"][:, 1:].to(logits.device)
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = labels != IGNORE_INDEX
            picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            totals = (picked * mask).sum(dim=-1)
            for (index, _), total in zip(chunk, totals.tolist()):
                scores[index].append(total)
    return scores


def accepts_labels(model: Any) -> bool:
    """Whether ``model.forward`` (or the callable ``model``) names a ``labels`` parameter."""
    forward = getattr(model, "forward", model)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    return "labels" in parameters
