"""Answer-only batching for causal LMs: the loss sees the answer tokens, never the prompt.

The prompt and the answer are tokenised separately and their ids concatenated, so the
prompt/answer boundary is exact whatever the tokenizer merges. The answer is tokenised as is:
the benchmark prompts end with whitespace ("... is ", "... -> "), so no leading space is added.
Too-long rows are never silently truncated into wrong targets: the prompt is cut from the
left only, and a row whose answer cannot fit (or whose prompt would keep fewer than
``min_prompt_tokens``) is skipped, counted in ``num_skipped`` and reported with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

IGNORE_INDEX = -100


class AnswerOnlyCollator:
    """Collate benchmark rows into ``input_ids``, ``attention_mask``, ``labels`` and ``domain_ids``.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        max_length: maximum tokens per row (prompt + answer + eos).
        padding_side: ``"left"`` or ``"right"``; ``None`` uses ``tokenizer.padding_side``.
        add_eos: append the eos token to the answer (so the model learns to stop).
        return_prompt_only: return left-padded prompts without answers or labels, for generation.
        min_prompt_tokens: skip a row rather than keep fewer prompt tokens than this.
        on_too_long: ``"skip"`` (warn and count) or ``"error"`` (raise, e.g. when every row must be scored).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        padding_side: Optional[str] = None,
        add_eos: bool = True,
        return_prompt_only: bool = False,
        min_prompt_tokens: int = 1,
        on_too_long: str = "skip",
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token; set one before collating, e.g. tokenizer.pad_token = tokenizer.eos_token."
            )
        if add_eos and not return_prompt_only and tokenizer.eos_token_id is None:
            raise ValueError(
                "add_eos=True needs a tokenizer with an eos token; set tokenizer.eos_token or pass add_eos=False."
            )
        side = padding_side or tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        if on_too_long not in ("skip", "error"):
            raise ValueError(f"on_too_long must be 'skip' or 'error', got {on_too_long!r}.")
        if max_length < 1 or min_prompt_tokens < 0:
            raise ValueError("max_length must be positive and min_prompt_tokens non-negative.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding_side = "left" if return_prompt_only else side
        self.add_eos = add_eos
        self.return_prompt_only = return_prompt_only
        self.min_prompt_tokens = min_prompt_tokens
        self.on_too_long = on_too_long
        self.num_skipped = 0
        self.num_truncated = 0
        # Tokenizers such as Llama's mark the start of a text with BOS; kept at the front when cutting.
        add_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
        self._bos = [tokenizer.bos_token_id] if add_bos else []

    def encode(
        self, prompts: Sequence[str], answers: Optional[Sequence[str]] = None
    ) -> list[tuple[list[int], list[int]]]:
        """Untruncated ``(prompt_ids, answer_ids)`` per row (batched tokenisation); the answer ids
        end with eos when ``add_eos``, and are empty in prompt-only mode."""
        tokenize = lambda texts: self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
        prompt_ids = [self._bos + ids for ids in tokenize(prompts)] if prompts else []
        if self.return_prompt_only or answers is None:
            return [(ids, []) for ids in prompt_ids]
        eos = [self.tokenizer.eos_token_id] if self.add_eos else []
        answer_ids = [ids + eos for ids in tokenize(answers)] if answers else []
        return list(zip(prompt_ids, answer_ids))

    def fit(self, prompt_ids: list[int], answer_ids: list[int]) -> Optional[list[int]]:
        """The prompt ids cut from the left to fit ``max_length``, or ``None`` if the row cannot fit."""
        room = self.max_length - len(answer_ids)
        if len(prompt_ids) <= room:
            return prompt_ids
        keep = room - len(self._bos)
        if keep < 0 or keep < self.min_prompt_tokens:
            return None
        return self._bos + prompt_ids[len(prompt_ids) - keep :]

    def _skip(self, row: Mapping[str, Any], length: int) -> None:
        name = row.get("problem_id", "?")
        message = (
            f"Row {name} needs {length} tokens; its answer cannot fit in max_length={self.max_length} "
            f"with at least {self.min_prompt_tokens} prompt tokens."
        )
        if self.on_too_long == "error":
            raise ValueError(message + " Raise max_length.")
        self.num_skipped += 1
        warnings.warn(message + f" Skipped ({self.num_skipped} so far).", stacklevel=3)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        keys = ("prompt",) if self.return_prompt_only else ("prompt", "answer")
        for row in rows:
            for key in keys:
                if not isinstance(row.get(key), str):
                    raise ValueError(
                        f"Every row needs a string {key!r}; got {type(row.get(key)).__name__} in row {row.get('problem_id', '?')}."
                    )
        encoded = self.encode(
            [row["prompt"] for row in rows], None if self.return_prompt_only else [row["answer"] for row in rows]
        )
        sequences, label_masks, domains = [], [], []
        for row, (prompt_ids, answer_ids) in zip(rows, encoded):
            if not answer_ids and not self.return_prompt_only:
                raise ValueError(f"Row {row.get('problem_id', '?')} has an empty answer and add_eos=False: it would "
                                 "train on nothing. Give it an answer or keep add_eos=True.")
            fitted = self.fit(prompt_ids, answer_ids)
            if fitted is None:
                self._skip(row, len(prompt_ids) + len(answer_ids))
                continue
            if len(fitted) < len(prompt_ids):
                self.num_truncated += 1
            sequences.append(fitted + answer_ids)
            label_masks.append([False] * len(fitted) + [True] * len(answer_ids))
            domains.append(row.get("domain_id"))
        if not sequences:
            raise ValueError(
                f"All {len(rows)} rows of the batch were too long for max_length={self.max_length}; "
                "raise max_length or filter the dataset first."
            )
        width = max(len(ids) for ids in sequences)
        batch_ids, batch_mask, batch_labels = [], [], []
        for ids, answer_mask in zip(sequences, label_masks):
            pad = width - len(ids)
            labels = [token if is_answer else IGNORE_INDEX for token, is_answer in zip(ids, answer_mask)]
            if self.padding_side == "left":
                batch_ids.append([self.tokenizer.pad_token_id] * pad + ids)
                batch_mask.append([0] * pad + [1] * len(ids))
                batch_labels.append([IGNORE_INDEX] * pad + labels)
            else:
                batch_ids.append(ids + [self.tokenizer.pad_token_id] * pad)
                batch_mask.append([1] * len(ids) + [0] * pad)
                batch_labels.append(labels + [IGNORE_INDEX] * pad)
        batch = {
            "input_ids": torch.tensor(batch_ids, dtype=torch.long),
            "attention_mask": torch.tensor(batch_mask, dtype=torch.long),
        }
        if not self.return_prompt_only:
            batch["labels"] = torch.tensor(batch_labels, dtype=torch.long)
        present = [domain is not None for domain in domains]
        if any(present):
            if not all(present):
                raise ValueError("Some rows of the batch have a domain_id and others not; give every row one or none.")
            batch["domain_ids"] = torch.tensor(domains, dtype=torch.long)
        return batch
