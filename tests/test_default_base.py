"""The embedded default base: tokenizer, pretraining, cache reuse and rebuild, offline reload."""

import json
import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iclm.experiment.default_base import (DefaultBaseSpec, REQUIRED_FILES, build_default_base, is_complete,
                                          train_tokenizer)

ANSWERS = ["on", "off", "undetermined", "0", "1", "2", *"ABCDEFGH"]
COLORS = ["red", "blue", "green", "cyan", "brown", "yellow"]
SHAPES = ["sphere", "cube", "cylinder"]


def synthetic_texts(count: int = 200, seed: int = 0) -> list[str]:
    """Prompt + answer strings shaped like the four training distributions (ACRE/RAVEN × text/symbolic)."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            lines = [f"A {rng.choice(COLORS)} {rng.choice(SHAPES)} in rubber is visible. The light is "
                     f"{rng.choice(['on', 'off'])}." for _ in range(3)]
            texts.append("\n".join(lines) + "\nThe state of the light is " + rng.choice(["on", "off", "undetermined"]))
        elif kind == 1:
            lines = [f"{rng.sample(range(20, 48), rng.randint(1, 4))} -> {rng.randint(0, 2)}" for _ in range(4)]
            query = f"[{rng.randint(20, 47)}] -> {rng.randint(0, 2)}"
            texts.append("Answer with 0, 1 or 2.\n" + "\n".join(lines) + "\n" + query)
        elif kind == 2:
            options = [f"{letter}. On an image, a {rng.choice(['small', 'large'])} {rng.choice(COLORS)} triangle. \n"
                       for letter in "ABCDEFGH"]
            texts.append("Find the pattern.\n" + "".join(options) + "The answer is " + rng.choice("ABCDEFGH"))
        else:
            options = [f"{letter}. [({', '.join(rng.choices('ABCDEFG', k=4))},)] \n" for letter in "ABCDEFGH"]
            texts.append("Only return the letter.\n" + "".join(options) + "The answer is " + rng.choice("ABCDEFGH"))
    return texts


TEXTS = synthetic_texts()
SMOKE = DefaultBaseSpec.preset("smoke")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The smoke models are too small to gain from threads, and a second thread stalls when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_thread):
    """One smoke build shared by the tests (the expensive part), with its log."""
    cache = tmp_path_factory.mktemp("cache")
    messages = []
    path = build_default_base(TEXTS, cache, preset="smoke", log=messages.append)
    return cache, path, messages


def test_smoke_build_is_complete_labelled_and_learns(built):
    cache, path, messages = built
    assert is_complete(path) and "smoke" in path
    assert any(message.startswith("Building") for message in messages)
    readme = open(f"{path}/README.md").read()
    label = "CPU stand-in for a real LLM, pretrained on the training splits of ACRE IID and RAVEN center_single only"
    assert label in " ".join(readme.split())
    record = json.load(open(f"{path}/pretraining.json"))
    assert record["spec"] == SMOKE.to_dict() and f"final loss **{record['final_loss']:.3f}**" in readme
    losses = [loss for _, loss in record["losses"]]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1.0
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "the temporary build folder was left behind"


def test_reloads_offline_with_auto_classes(built):
    _, path, _ = built
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.name_or_path == path
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == SMOKE.hidden_size
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert specials == ("<s>", "</s>", "<pad>", "<unk>")
    assert tokenizer.padding_side == "right" and model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("The light is ", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] <= ids.shape[1] + 2


def test_second_call_reuses_the_cache(built):
    cache, path, _ = built
    before = {name: (cache / path / name).stat().st_mtime_ns for name in REQUIRED_FILES}
    messages = []
    assert build_default_base(TEXTS, cache, preset="smoke", log=messages.append) == path  # no rebuild: no timing
    assert len(messages) == 1 and messages[0].startswith("Reusing")
    assert before == {name: (cache / path / name).stat().st_mtime_ns for name in REQUIRED_FILES}


def test_incomplete_cache_is_rebuilt_identically(tmp_path):
    spec = replace(SMOKE, pretrain_steps=2)
    path = build_default_base(TEXTS[:40], tmp_path, spec=spec, log=lambda message: None)
    weights = (tmp_path / path / "model.safetensors").read_bytes()
    (tmp_path / path / "model.safetensors").unlink()
    messages = []
    assert build_default_base(TEXTS[:40], tmp_path, spec=spec, log=messages.append) == path
    assert "incomplete" in messages[0] and is_complete(path)
    assert (tmp_path / path / "model.safetensors").read_bytes() == weights, "the build is not deterministic"


def test_cache_key_follows_spec_and_texts(tmp_path):
    spec = replace(SMOKE, pretrain_steps=2)
    quiet = lambda message: None  # noqa: E731
    path = build_default_base(TEXTS[:40], tmp_path, spec=spec, log=quiet)
    assert build_default_base(TEXTS[:40], tmp_path, spec=replace(spec, seed=1), log=quiet) != path
    assert build_default_base(TEXTS[:39], tmp_path, spec=spec, log=quiet) != path
    assert "custom" in path and "smoke" not in path


def test_answers_are_single_tokens_alone_and_after_a_prompt():
    tokenizer = train_tokenizer(TEXTS, 512)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for answer in ANSWERS:
        ids = encode(answer)
        assert len(ids) == 1 and tokenizer.decode(ids) == answer, (answer, tokenizer.convert_ids_to_tokens(ids))
    for text in TEXTS:  # prompt and answer tokenised apart == together (how the collator builds rows)
        prompt, answer = text.rsplit(" ", 1)
        apart = encode(prompt + " ") + encode(answer)
        assert apart == encode(text)
        assert tokenizer.decode(apart) == text
    assert tokenizer.convert_ids_to_tokens(encode("[12, 5] -> 2"))[:3] == ["[", "1", "2"]


def test_clear_errors():
    with pytest.raises(ValueError, match="No training texts"):
        build_default_base([], "/nonexistent")
    with pytest.raises(ValueError, match="Unknown default-base preset"):
        build_default_base(TEXTS, "/nonexistent", preset="huge")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        replace(SMOKE, num_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, 100)
