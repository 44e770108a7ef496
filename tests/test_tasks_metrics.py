"""Metrics as local evaluate modules, answer normalisation, and candidate scoring with a causal LM."""

import math

import evaluate
import pytest
import torch

from iclm.metrics import load_metric, metric_path, normalize_answer, score_choices
from iclm.tasks import load_task
from tests.test_tasks_helpers import benchmark_texts, tiny_tokenizer


@pytest.mark.parametrize(
    "text, form, expected",
    [
        ("on. The light is on", "word", "on"),
        ("  Undetermined!", "word", "undetermined"),
        ("2\n[3] -> 2", "word", "2"),
        ("B. On an image, a tiny", "letter", "b"),
        ('"C"', "letter", "c"),
        ("(h) because", "letter", "h"),
        ("Because the size grows, C", "letter", ""),  # a word starting with B is no "B"
        ("Z", "letter", ""),
        ("...", "word", ""),
        ("", "letter", ""),
    ],
)
def test_normalize_answer(text, form, expected):
    assert normalize_answer(text, form) == expected


def test_exact_match_loaded_from_its_folder_groups_and_baselines():
    metric = evaluate.load(metric_path("exact_match_accuracy"))
    assert type(metric).__name__ == "ExactMatchAccuracy"
    result = metric.compute(
        predictions=["on. The light", "Off", "1", "B. On an image", "The answer is C"],
        references=["on", "undetermined", "1", "B", "C"],
        choices=[["off", "undetermined", "on"]] * 2 + [["0", "1", "2"]] + [list("ABCDEFGH")] * 2,
        splits=["iid", "iid", "comp", "center_single", "center_single"],
        renderings=["text", "text", "symbolic", "text", "text"],
    )
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["count"] == 5
    assert result["chance"] == pytest.approx((3 * (1 / 3) + 2 * (1 / 8)) / 5)
    assert result["majority"] == pytest.approx(1 / 5)
    assert result["per_split"]["iid"] == {"accuracy": 0.5, "chance": pytest.approx(1 / 3), "majority": 0.5, "count": 2}
    assert result["per_split"]["center_single"]["accuracy"] == 0.5  # "The answer is C" starts with "t"
    assert result["per_rendering"]["symbolic"] == {
        "accuracy": 1.0,
        "chance": pytest.approx(1 / 3),
        "majority": 1.0,
        "count": 1,
    }
    assert result["per_rendering"]["text"]["accuracy"] == pytest.approx(2 / 4)


def test_exact_match_without_optional_inputs_and_explicit_tasks():
    metric = load_metric("exact_match_accuracy")
    result = metric.compute(predictions=["on", "on", "off"], references=["on", "on", "on"])
    assert result == {"accuracy": pytest.approx(2 / 3), "chance": None, "majority": 1.0, "count": 3}
    # "a" is an ACRE-style word here, not a RAVEN letter: "apple" does not match it.
    assert metric.compute(predictions=["apple"], references=["a"], tasks=["acre"])["accuracy"] == 0.0
    assert metric.compute(predictions=["apple"], references=["a"], tasks=["raven"])["accuracy"] == 0.0
    assert metric.compute(predictions=["A) apple"], references=["a"], tasks=["raven"])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="Unknown task 'arc'"):
        metric.compute(predictions=["on"], references=["on"], tasks=["arc"])


def test_choice_accuracy_with_incremental_batches():
    metric = load_metric("choice_accuracy")
    metric.add_batch(predictions=[[-1.0, -3.0, -2.0], [-5.0, -0.5, -4.0]], references=[0, 2], splits=["iid", "iid"])
    metric.add(prediction=[-1.0] * 7 + [0.0], reference=7, splits="center_single")
    result = metric.compute()
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 8) / 3)
    assert result["per_split"]["iid"]["accuracy"] == 0.5
    assert result["per_split"]["center_single"] == {"accuracy": 1.0, "chance": 0.125, "majority": 1.0, "count": 1}
    with pytest.raises(ValueError, match="reference index 3 is outside its 3 candidates"):
        metric.compute(predictions=[[0.0, 1.0, 2.0]], references=[3])
    with pytest.raises(ValueError, match="non-finite candidate scores"):
        metric.compute(predictions=[[float("nan")] * 3], references=[0])


def test_unknown_metric_name_is_an_error():
    with pytest.raises(
        ValueError, match="Unknown metric 'bleu'; expected one of exact_match_accuracy, choice_accuracy"
    ):
        load_metric("bleu")


@pytest.fixture(scope="module")
def tiny_lm():
    """A randomly initialised one-layer GPT-2 (attention depends on the mask) and a tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer(benchmark_texts())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval(), tokenizer


def _manual_score(model, tokenizer, prompt, choice):
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    choice_ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + choice_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(prompt_ids) + k - 1, token].item() for k, token in enumerate(choice_ids))


def test_score_choices_sums_answer_log_probabilities_whatever_the_batch(tiny_lm):
    model, tokenizer = tiny_lm
    rows = list(load_task("acre", "symbolic", "iid", limit=3)) + list(load_task("acre", "text", "iid", limit=2))
    prompts, choices = [r["prompt"] for r in rows], [r["choices"] for r in rows]
    one_by_one = score_choices(model, tokenizer, prompts, choices, batch_size=1)
    batched = score_choices(model, tokenizer, prompts, choices, batch_size=7)
    assert [len(s) for s in batched] == [3] * 5
    for prompt, options, scores_a, scores_b in zip(prompts, choices, one_by_one, batched):
        for option, a, b in zip(options, scores_a, scores_b):
            assert a == pytest.approx(b, abs=1e-4)
            assert a == pytest.approx(_manual_score(model, tokenizer, prompt, option), abs=1e-4)
            assert a < 0 and math.isfinite(a)
    metric = load_metric("choice_accuracy")
    result = metric.compute(predictions=batched, references=[c.index(r["answer"]) for c, r in zip(choices, rows)])
    assert result["count"] == 5 and result["chance"] == pytest.approx(1 / 3)


def test_score_choices_rejects_what_it_cannot_score_whole(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="Got 2 prompts but 1 choice lists"):
        score_choices(model, tokenizer, ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="needed cutting to fit max_length=4"):
        score_choices(model, tokenizer, ["The state of the light is "], [["on", "off"]], max_length=4)


@pytest.fixture(scope="module")
def tiny_iclm(tiny_lm):
    """An ICLM on the tiny GPT-2 whose codebook holds the router's own embeddings of prompt + candidate, so a
    router that read the candidate would send the candidates of one prompt to different modules."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_iclm import IclmForCausalLM

    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=1, n_head=2))
    model = IclmForCausalLM.from_base(base, num_domains=3).eval()
    row = load_task("acre", "symbolic", "iid", limit=1)[0]
    prompt = tokenizer(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = [torch.cat([prompt, tokenizer(choice, add_special_tokens=False, return_tensors="pt")["input_ids"]], 1)
           for choice in row["choices"]]
    with torch.no_grad():  # route on prompt + candidate (no labels): the pre-fix behaviour of score_choices
        embeddings = torch.cat([model.route(input_ids=i).embeddings for i in ids])
        model.model.router.codebook.copy_(embeddings)
        blind = [model.route(input_ids=i).routes.item() for i in ids]
    assert len(set(blind)) == 3, "precondition: reading the candidate sends each candidate to its own module"
    return model, tokenizer, row


def test_score_choices_routes_an_iclm_on_the_prompt_only(tiny_iclm, monkeypatch):
    model, tokenizer, row = tiny_iclm
    import functools

    seen = []
    forward = type(model).forward

    @functools.wraps(forward)
    def recording_forward(self, *args, **kwargs):
        outputs = forward(self, *args, **kwargs)
        seen.extend(outputs.routes.tolist())
        return outputs

    monkeypatch.setattr(type(model), "forward", recording_forward)
    other = load_task("acre", "symbolic", "iid", limit=3)[2]
    prompts, choices = [row["prompt"], other["prompt"]], [row["choices"], other["choices"]]
    scores = score_choices(model, tokenizer, prompts, choices, batch_size=4)
    assert len(seen) == 6 and [len(s) for s in scores] == [3, 3]
    prompt_ids = tokenizer(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        prompt_route = model.route(input_ids=prompt_ids).routes.item()
    assert seen[:3] == [prompt_route] * 3, "every candidate of a prompt goes to the prompt's module"
    assert len(set(seen[3:])) == 1
    # The scores are those of the prompt's module, run on each candidate with the route fixed.
    for choice, score in zip(row["choices"], scores[0]):
        choice_ids = tokenizer(choice, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([prompt_ids, choice_ids], dim=1)  # tokenised apart, as the collator does
        with torch.no_grad():
            logits = forward(model, input_ids=ids, domain_ids=torch.tensor([prompt_route])).logits[0]
        n = prompt_ids.shape[1]
        expected = torch.log_softmax(logits.float(), -1)[n - 1 : -1].gather(-1, ids[0, n:, None]).sum().item()
        assert score == pytest.approx(expected, abs=1e-4)


def test_score_choices_passes_labels_only_to_models_that_take_them():
    from iclm.metrics.scoring import accepts_labels

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    class Labelled(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, labels=None):
            return input_ids

    assert not accepts_labels(Plain()) and accepts_labels(Labelled())
