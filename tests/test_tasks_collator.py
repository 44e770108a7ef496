"""AnswerOnlyCollator: exact prompt/answer boundary, answer-only labels, padding, safe truncation."""

import warnings

import pytest
import torch

from iclm.tasks import AnswerOnlyCollator, load_task
from iclm.tasks.collator import IGNORE_INDEX
from tests.test_tasks_helpers import benchmark_texts, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(benchmark_texts())


@pytest.fixture(scope="module")
def rows():
    """Real rows of different lengths and tasks: 2 ACRE text, 2 RAVEN symbolic."""
    return list(load_task("acre", "text", "iid", limit=2)) + list(
        load_task("raven", "symbolic", "center_single", limit=2)
    )


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_labels_cover_exactly_the_answer_and_eos(tokenizer, rows, side):
    batch = AnswerOnlyCollator(tokenizer, max_length=4096, padding_side=side)(rows)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    width = max(len(_ids(tokenizer, r["prompt"])) + len(_ids(tokenizer, r["answer"])) + 1 for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    for i, row in enumerate(rows):
        expected = _ids(tokenizer, row["prompt"]) + _ids(tokenizer, row["answer"]) + [eos]
        mask = batch["attention_mask"][i].bool()
        assert batch["input_ids"][i][mask].tolist() == expected
        assert set(batch["input_ids"][i][~mask].tolist()) <= {pad}
        real = torch.nonzero(mask).flatten()
        assert (real[-1] - real[0] + 1) == len(expected)  # contiguous
        assert (real[0] == 0) if side == "right" else (real[-1] == width - 1)
        labels = batch["labels"][i]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == _ids(tokenizer, row["answer"]) + [eos]
        assert tokenizer.decode(kept[:-1]) == row["answer"]
        assert (labels[~mask] == IGNORE_INDEX).all()
    assert batch["domain_ids"].tolist() == [0, 0, 3, 3] and batch["domain_ids"].dtype == torch.long


def test_answer_is_tokenised_apart_from_the_prompt(tokenizer):
    """Byte-level BPE merges ' on' when tokenised together; the collator keeps the boundary."""
    prompt, answer = "The state of the light is ", "on"
    assert _ids(tokenizer, prompt + answer) != _ids(tokenizer, prompt) + _ids(tokenizer, answer)
    batch = AnswerOnlyCollator(tokenizer, add_eos=False)([{"prompt": prompt, "answer": answer}])
    assert batch["input_ids"][0].tolist() == _ids(tokenizer, prompt) + _ids(tokenizer, answer)
    assert "domain_ids" not in batch


def test_padding_side_defaults_to_the_tokenizer(tokenizer, rows):
    tokenizer.padding_side = "left"
    try:
        batch = AnswerOnlyCollator(tokenizer, max_length=4096)(rows[:3])
    finally:
        tokenizer.padding_side = "right"
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()


def test_long_prompts_are_cut_from_the_left_never_the_answer(tokenizer, rows):
    collator = AnswerOnlyCollator(tokenizer, max_length=60, padding_side="right")
    batch = collator(rows)
    assert batch["input_ids"].shape[1] == 60 and collator.num_truncated == 4 and collator.num_skipped == 0
    for i, row in enumerate(rows):
        answer = _ids(tokenizer, row["answer"]) + [tokenizer.eos_token_id]
        prompt = _ids(tokenizer, row["prompt"])
        assert batch["input_ids"][i].tolist() == prompt[-(60 - len(answer)) :] + answer
        assert batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist() == answer


def test_rows_that_cannot_fit_are_skipped_counted_and_reported(tokenizer):
    long_answer = {"prompt": "The answer is ", "answer": "undetermined " * 20, "problem_id": "long", "domain_id": 1}
    short = {"prompt": "The answer is ", "answer": "B", "problem_id": "short", "domain_id": 2}
    collator = AnswerOnlyCollator(tokenizer, max_length=12, min_prompt_tokens=2)
    with pytest.warns(UserWarning, match=r"Row long needs \d+ tokens.*Skipped \(1 so far\)"):
        batch = collator([long_answer, short])
    assert collator.num_skipped == 1 and batch["input_ids"].shape[0] == 1 and batch["domain_ids"].tolist() == [2]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="All 1 rows of the batch were too long"):
        collator([long_answer])
    assert collator.num_skipped == 2
    strict = AnswerOnlyCollator(tokenizer, max_length=12, on_too_long="error")
    with pytest.raises(ValueError, match="Row long needs .* Raise max_length"):
        strict([long_answer, short])


def test_minimum_prompt_tokens_is_respected(tokenizer):
    row = {"prompt": "[3, 17] -> 2\n[25, 46] -> ", "answer": "1", "problem_id": "p"}
    need = len(_ids(tokenizer, row["prompt"])) + len(_ids(tokenizer, "1")) + 1
    assert need > 6
    kept = AnswerOnlyCollator(tokenizer, max_length=6, min_prompt_tokens=1)([row])
    assert kept["input_ids"].shape[1] == 6
    collator = AnswerOnlyCollator(tokenizer, max_length=6, min_prompt_tokens=5)
    with warnings.catch_warnings(record=True), pytest.raises(ValueError, match="too long"):
        collator([row])
    assert collator.num_skipped == 1


def test_bos_is_kept_at_the_front_when_cutting(tokenizer):
    tokenizer.add_bos_token = True
    try:
        batch = AnswerOnlyCollator(tokenizer, max_length=10, add_eos=False)(
            [{"prompt": "The state of the light is ", "answer": "on"}]
        )
    finally:
        tokenizer.add_bos_token = False
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 10
    assert ids[1:] == (_ids(tokenizer, "The state of the light is ") + _ids(tokenizer, "on"))[-9:]


def test_prompt_only_batches_are_left_padded_for_generation(tokenizer, rows):
    batch = AnswerOnlyCollator(tokenizer, max_length=4096, padding_side="right", return_prompt_only=True)(rows)
    assert "labels" not in batch and set(batch) == {"input_ids", "attention_mask", "domain_ids"}
    for i, row in enumerate(rows):
        prompt = _ids(tokenizer, row["prompt"])
        assert batch["input_ids"][i][-len(prompt) :].tolist() == prompt
        assert batch["attention_mask"][i].sum() == len(prompt)
    assert (batch["attention_mask"][:, -1] == 1).all()


def test_works_as_a_dataloader_collate_fn(tokenizer):
    dataset = load_task("acre", "symbolic", "train", limit=6)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=AnswerOnlyCollator(tokenizer))
    batches = list(loader)
    assert len(batches) == 2 and all(b["domain_ids"].tolist() == [1, 1, 1] for b in batches)


def test_bad_tokenizers_and_rows_are_clear_errors(tokenizer):
    no_pad = tiny_tokenizer(["some text to train on"], pad=None)
    with pytest.raises(ValueError, match=r"no pad token.*tokenizer\.pad_token = tokenizer\.eos_token"):
        AnswerOnlyCollator(no_pad)
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        AnswerOnlyCollator(tokenizer, padding_side="middle")
    collator = AnswerOnlyCollator(tokenizer)
    with pytest.raises(ValueError, match="string 'answer'"):
        collator([{"prompt": "x -> ", "answer": 2}])
    with pytest.raises(ValueError, match="empty answer and add_eos=False"):
        AnswerOnlyCollator(tokenizer, add_eos=False)([{"prompt": "x -> ", "answer": ""}])
    assert AnswerOnlyCollator(tokenizer)([{"prompt": "x -> ", "answer": ""}])["labels"].ne(-100).sum() == 1  # eos
    with pytest.raises(ValueError, match="Some rows of the batch have a domain_id"):
        collator([{"prompt": "a", "answer": "b", "domain_id": 0}, {"prompt": "a", "answer": "b"}])
