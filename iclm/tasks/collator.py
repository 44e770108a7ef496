"""Answer-only batching for causal LMs: the loss sees the answer tokens, never the prompt.

The prompt and the answer are tokenised separately and their ids concatenated, so the
prompt/answer boundary is exact whatever the tokenizer merges. The answer is tokenised as is:
the benchmark prompts end with whitespace ("... is ", "... -> "), so no leading space is added.
Too-long rows are never silently truncated into wrong targets: the prompt is cut from the
left only, and a row whose answer cannot fit (or whose prompt would keep fewer than
``min_prompt_tokens``) is skipped, counted in ``num_skipped`` and reported with a warning.
A prompt that is cut is counted in ``num_truncated`` (``num_truncated_tokens`` tokens in all) and
reported too: one ``UserWarning`` per collator at the first cut, then a ``logging`` warning with the
running counts each time they reach 10, 100, 1000, … rows. With ``AnswerOnlyCollator.report_every_collator =
False`` (``iclm.terminal.quiet_run``: a command writing to a log file) only the first collator of each
``max_length`` in the process reports; the others log at INFO level.
"""

from __future__ import annotations

import logging
import operator
import warnings
from typing import Any, Mapping, Optional, Sequence

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


_REPORTED_MAX_LENGTHS: set = set()  # with report_every_collator False: settings whose cuts were reported


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

    report_every_collator = True  # False: cut prompts reported once per max_length in the process (see above)

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
        self.num_truncated = 0  # rows whose prompt was cut (running count)
        self.num_truncated_tokens = 0  # prompt tokens cut, all rows together
        self.max_truncated_tokens = 0  # the most tokens cut from one prompt
        self.longest_truncated_row = 0  # tokens the longest cut row needed (prompt + answer)
        self._next_truncation_report = 1
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

    def _skip(self, row: Mapping[str, Any], length: int, answer_length: int) -> None:
        name = row.get("problem_id", "?")
        message = (
            f"Row {name} needs {length} tokens; its answer cannot fit in max_length={self.max_length} "
            f"with at least {self.min_prompt_tokens} prompt tokens."
        )
        fix = (f" Raise max_length (to at least {answer_length + len(self._bos) + self.min_prompt_tokens} to keep "
               f"this row, to {length} to keep its whole prompt), or lower min_prompt_tokens.")
        if self.on_too_long == "error":
            raise ValueError(message + fix)
        self.num_skipped += 1
        warnings.warn(message + f" Skipped ({self.num_skipped} so far)." + fix
                      + " (on_too_long='error' makes a skipped row an error.)", stacklevel=3)

    def _truncated(self, row: Mapping[str, Any], prompt_length: int, kept: int, answer_length: int) -> None:
        """Count a prompt cut from ``prompt_length`` to ``kept`` tokens, and report it (see the module docstring)."""
        cut = prompt_length - kept
        self.num_truncated += 1
        self.num_truncated_tokens += cut
        self.max_truncated_tokens = max(self.max_truncated_tokens, cut)
        self.longest_truncated_row = max(self.longest_truncated_row, prompt_length + answer_length)
        if self.num_truncated < self._next_truncation_report:
            return
        latest = f"row {row['problem_id']}, " if row.get("problem_id") is not None else ""
        message = (
            f"AnswerOnlyCollator cut the prompt of {self.num_truncated} row(s) so far from the left to fit "
            f"max_length={self.max_length} ({self.num_truncated_tokens} prompt tokens cut in all, at most "
            f"{self.max_truncated_tokens} from one row; latest: {latest}{prompt_length} -> {kept} prompt tokens). "
            "The model sees only the end of these prompts. Raise max_length (to at least "
            f"{self.longest_truncated_row} for the longest row so far) to keep prompts whole, or raise "
            "min_prompt_tokens to skip rows that keep too little; collator.num_truncated keeps the running count."
        )
        if self._next_truncation_report == 1 and not self.report_every_collator:
            self._reporting = self.max_length not in _REPORTED_MAX_LENGTHS
            _REPORTED_MAX_LENGTHS.add(self.max_length)
        if not getattr(self, "_reporting", True):
            logger.info(message)
        elif self._next_truncation_report == 1:
            warnings.warn(message, stacklevel=3)
        else:
            logger.warning(message)
        self._next_truncation_report *= 10

    @staticmethod
    def _domain_id(row: Mapping[str, Any], position: int) -> Optional[int]:
        """The row's ``domain_id`` as an int (``None`` if absent); ValueError for anything but an int >= 0."""
        value = row.get("domain_id")
        if value is None:
            return None
        try:
            index = None if isinstance(value, (bool, str, bytes)) else operator.index(value)
        except TypeError:
            index = None
        if index is None or index < 0:
            name = row.get("problem_id")
            where = f"Row {name} (row {position} of the batch)" if name is not None else f"Row {position} of the batch"
            raise ValueError(
                f"{where} has domain_id {value!r} "
                f"({type(value).__name__}): domain_id must be an int index 0..N-1 of the row's domain (N = "
                "num_domains), or absent from every row. Map domain names to indices first (e.g. acre -> 0, "
                "raven -> 1)."
            )
        return index

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        keys = ("prompt",) if self.return_prompt_only else ("prompt", "answer")
        domain_ids = [self._domain_id(row, position) for position, row in enumerate(rows, start=1)]
        for position, row in enumerate(rows, start=1):
            for key in keys:
                if not isinstance(row.get(key), str):
                    got = ("nothing (the field is missing)" if key not in row
                           else f"{row[key]!r:.40} ({type(row[key]).__name__})")
                    raise ValueError(
                        f"Every row needs a string {key!r}; got {got} in row {row.get('problem_id', '?')} "
                        f"(row {position} of the batch). Give each row string 'prompt' and 'answer' fields, e.g. "
                        "{'prompt': '[5, 7] -> ', 'answer': '12'}."
                    )
        encoded = self.encode(
            [row["prompt"] for row in rows], None if self.return_prompt_only else [row["answer"] for row in rows]
        )
        sequences, label_masks, domains = [], [], []
        for row, (prompt_ids, answer_ids), domain_id in zip(rows, encoded, domain_ids):
            if not answer_ids and not self.return_prompt_only:
                raise ValueError(f"Row {row.get('problem_id', '?')} has an empty answer and add_eos=False: it would "
                                 "train on nothing. Give it an answer or keep add_eos=True.")
            fitted = self.fit(prompt_ids, answer_ids)
            if fitted is None:
                self._skip(row, len(prompt_ids) + len(answer_ids), len(answer_ids))
                continue
            if len(fitted) < len(prompt_ids):
                self._truncated(row, len(prompt_ids), len(fitted), len(answer_ids))
            sequences.append(fitted + answer_ids)
            label_masks.append([False] * len(fitted) + [True] * len(answer_ids))
            domains.append(domain_id)
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
