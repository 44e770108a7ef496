"""The shipped stand-in base (iclm/data/stand_in): what its card records is what it does, and its pretraining resumes
exactly where it stopped."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iclm.experiment import pretraining, skills_corpus
from iclm.experiment.stand_in import FOLDER, corpus_leakage, stand_in_base


def test_the_shipped_base_reproduces_its_recorded_probe_accuracies():
    path, record = stand_in_base()
    assert (FOLDER / "model.safetensors").stat().st_size < 30 * 2**20
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.num_parameters() == record["parameters"] and len(tokenizer) == record["vocab_size"]
    last = record["probes"][-1]
    assert last["step"] == record["step"]
    measured = pretraining.probe(model, tokenizer, pretraining.probe_documents(record["probe_documents"]))
    assert measured.keys() == last["accuracy"].keys()
    for kind, value in last["accuracy"].items():
        assert measured[kind] == pytest.approx(value, abs=0.01), kind
    card = (FOLDER / "README.md").read_text()
    assert f"steps: {record['step']:,}" in card and "CPU stand-in" in card


def test_a_missing_stand_in_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="iclm pretrain --out"):
        stand_in_base(tmp_path)


def test_pretraining_resumes_bit_for_bit(tmp_path):
    """Two pieces (2 steps, then 2 more with --resume) give the weights of one 4-step run: the corpus position, the
    optimizer moments and the schedule are all restored."""
    recipe = pretraining.Recipe(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=300,
                                seq_len=64, batch_size=2, warmup_steps=2, total_steps=4)
    torch.manual_seed(0)
    whole = pretraining.pretrain(str(tmp_path / "whole"), 4, recipe, probe_every=100, probe_count=2, log=lambda m: None)
    pretraining.pretrain(str(tmp_path / "pieces"), 2, recipe, probe_every=100, probe_count=2, log=lambda m: None)
    pieces = pretraining.pretrain(str(tmp_path / "pieces"), 4, resume=True, probe_every=100, probe_count=2,
                                  log=lambda m: None)
    assert pieces["documents"] == whole["documents"] and pieces["step"] == whole["step"] == 4
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "pieces").state_dict()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(FileExistsError, match="--resume"):
        pretraining.pretrain(str(tmp_path / "pieces"), 5, recipe, log=lambda m: None)


def test_the_corpus_never_holds_a_task_query_or_a_test_context():
    """Skill documents ask their own questions: never the task's query ("... -> ", "The state of the light is ",
    "The answer is "); and no document of the first 300 shows a real val/test ACRE context."""
    record = {"documents": 300, "recipe": {"seed": 0}}
    leakage = corpus_leakage(record, set())
    assert leakage["acre_contexts_of_a_real_val_or_test_problem"] == 0
    for index in range(300):
        text = skills_corpus.text_of(skills_corpus.document(0, index))
        assert "The state of the light is" not in text and "The answer is" not in text
        assert not any(line.endswith("-> ") or line.endswith("->") for line in text.split("\n"))
