"""Bad input to the model side (config, from_base, forward, generate, save/load, trainer): each case either raises
a specific error whose message names the problem and the fix, or is handled correctly. None may crash deep inside
torch/transformers with a message that names neither."""

import functools
import json
import os

import pytest
import torch
from conftest import VOCAB, batch, make_trained, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset, IterableDataset
from transformers import (BertConfig, BertForMaskedLM, BertLMHeadModel, BertModel, DynamicCache, LlamaModel,
                          TrainingArguments)

from configuration_iclm import IclmConfig
from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments


@functools.lru_cache(maxsize=None)
def _model(**overrides):
    return make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2, **dict(overrides))).eval()


def _bert(cls, **extra):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, **extra)
    return cls(config).eval()


def _ids(rows=2, length=6):
    return batch(batch_size=rows, length=length)["input_ids"]


def _inputs(**changes):
    inputs = batch()
    inputs.update(changes)
    return inputs


def _forward(**kwargs):
    return lambda _: _model()(**kwargs)


def _cache_from(**kwargs):
    cache = DynamicCache()
    _model()(input_ids=_ids(), cache=cache, use_cache=True, **kwargs)
    return cache


def _continue(cache, **kwargs):
    return _model()(input_ids=_ids()[:, -1:], cache=cache, use_cache=True, **kwargs)


def _without_routes():
    cache = _cache_from(domain_ids=torch.tensor([0, 1]))
    del cache.iclm_routes
    return _continue(cache)


def _packed_with_cache():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    return _model()(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]), use_cache=True)


def _backbone_in_training():
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2).train()
    model.forward = model.forward  # replaced, as TRL's fused LM head replaces it
    return model.model(input_ids=_ids())


# ------------------------------------------------------------------------------------ save and load
def _saved(tmp_path, by_reference=False, **overrides):
    if by_reference:
        tiny_llama().save_pretrained(tmp_path / "base")
        model = IclmForCausalLM.from_base(str(tmp_path / "base"), num_domains=2, **overrides)
    else:
        model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, **overrides)
    model.save_pretrained(tmp_path / "iclm")
    return tmp_path / "iclm"


def _load(folder, **kwargs):
    return IclmForCausalLM.from_pretrained(folder, **kwargs)


def _save_into_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    _model().save_pretrained(tmp_path / "file")


def _pickled_only(tmp_path):
    folder = _saved(tmp_path)
    os.remove(folder / "model.safetensors")
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    _load(folder)


def _truncated(tmp_path):
    folder = _saved(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _load(folder)


def _pickle_named_safetensors(tmp_path):
    folder = _saved(tmp_path)
    torch.save({"x": torch.zeros(1)}, folder / "model.safetensors")
    _load(folder)


def _truncated_by_reference(tmp_path):
    folder = _saved(tmp_path, by_reference=True)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    _load(folder)


def _newer_format(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    _load(folder)


def _other_base(tmp_path, **kwargs):
    folder = _saved(tmp_path, by_reference=True)
    other = tiny_llama(seed=7)  # same shapes, other weights
    other.save_pretrained(tmp_path / "other")
    return _load(folder, base_model_name_or_path=str(tmp_path / "other"), **kwargs)


def _other_vocabulary(tmp_path):
    folder = _saved(tmp_path, by_reference=True)
    bigger = tiny_llama()
    bigger.resize_token_embeddings(VOCAB + 40)
    bigger.save_pretrained(tmp_path / "bigger")
    _load(folder, base_model_name_or_path=str(tmp_path / "bigger"))


def _missing_base(tmp_path):
    folder = _saved(tmp_path, by_reference=True)
    config = json.loads((folder / "config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "config.json").write_text(json.dumps(config))
    _load(folder)


def _other_module_count(tmp_path):
    folder = _saved(tmp_path, by_reference=True)
    config = json.loads((folder / "config.json").read_text())
    config["num_domains"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    _load(folder)


# --------------------------------------------------------------------------------------------- trainer
def _trainer(tmp_path, model=None, dataset=None, collator=None, args=None, **overrides):
    tokenizer = word_tokenizer(vocabulary())
    options = dict(output_dir=str(tmp_path), report_to="none", max_steps=1, per_device_train_batch_size=4,
                   router_init_samples=8)
    options.update(overrides)
    return IclmTrainer(model=model or IclmForCausalLM.from_base(tiny_llama(), num_domains=2),
                       args=args or IclmTrainingArguments(**options),
                       train_dataset=Dataset.from_list(two_domain_rows(8)) if dataset is None else dataset,
                       data_collator=collator or AnswerOnlyCollator(tokenizer, max_length=64))


def _no_labels_collator(rows):
    ids = torch.randint(3, VOCAB, (len(rows), 6))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


CASES = {
    # config
    "config: lora_r str": (lambda _: IclmConfig(lora_r="8"), ValueError, r"lora_r must be an int >= 1 .*got '8' \(str\)"),
    "config: lora_alpha list": (lambda _: IclmConfig(lora_alpha=[16]), ValueError, r"lora_alpha must be a number"),
    "config: dropout negative": (lambda _: IclmConfig(lora_dropout=-0.1), ValueError, r"lora_dropout must be a number in \[0, 1\)"),
    "config: router_dim float": (lambda _: IclmConfig(router_dim=64.0), ValueError, "router_dim must be an int"),
    "config: temperature inf": (lambda _: IclmConfig(router_temperature=float("inf")), ValueError, "router_temperature must be a number"),
    "config: invariant flag int": (lambda _: IclmConfig(use_invariant_module=1), ValueError, "use_invariant_module must be True or False"),
    "config: weight None": (lambda _: IclmConfig(domain_loss_weight=None), ValueError, "domain_loss_weight must be a number"),
    "config: mi_dim 1": (lambda _: IclmConfig(mi_dim=1), ValueError, "mi_dim must be an int >= 2"),
    "config: mi_debiased str": (lambda _: IclmConfig(mi_debiased="yes"), ValueError, "mi_debiased must be True or False"),
    "config: prefix float": (lambda _: IclmConfig(router_prefix_length=2.5), ValueError, "router_prefix_length must be an int"),
    "config: targets int": (lambda _: IclmConfig(lora_target_modules=[3]), ValueError, "lora_target_modules must be None"),
    # from_base
    "from_base: BERT masked LM": (lambda _: IclmForCausalLM.from_base(_bert(BertForMaskedLM)), ValueError, "is not causal.*ICLM needs a causal LM"),
    "from_base: BERT decoder without is_decoder": (lambda _: IclmForCausalLM.from_base(_bert(BertLMHeadModel)), ValueError, "is not causal"),
    "from_base: BERT encoder": (lambda _: IclmForCausalLM.from_base(_bert(BertModel)), ValueError, "needs a causal LM with an LM head"),
    "from_base: headless Llama": (lambda _: IclmForCausalLM.from_base(LlamaModel(tiny_llama().config)), ValueError, "needs a causal LM with an LM head"),
    "from_base: not a model": (lambda _: IclmForCausalLM.from_base(object()), ValueError, "needs a causal LM with an LM head.*got object"),
    "from_base: zero domains": (lambda _: IclmForCausalLM.from_base(tiny_llama(), num_domains=0), ValueError, "num_domains must be an int >= 1"),
    "from_base: target missing": (lambda _: IclmForCausalLM.from_base(tiny_llama(), lora_target_modules=["query"]), ValueError, r"matches no linear layer.*named: \["),
    "from_base: target not linear": (lambda _: IclmForCausalLM.from_base(tiny_llama(), lora_target_modules=["mlp"]), ValueError, "matches only modules that are not linear layers"),
    "from_base: target regex": (lambda _: IclmForCausalLM.from_base(tiny_llama(), lora_target_modules=r".*\.nothing_\d"), ValueError, "matches no linear layer"),
    "from_base: missing folder": (lambda p: IclmForCausalLM.from_base(str(p / "no" / "such" / "dir")), FileNotFoundError, "does not exist"),
    "load: missing folder": (lambda p: IclmForCausalLM.from_pretrained(str(p / "nowhere/model")), FileNotFoundError, "does not exist"),
    "from_base: aggregation": (lambda _: IclmForCausalLM.from_base(tiny_llama(), aggregation="concat"), ValueError, "Unknown aggregation 'concat'"),
    # forward
    "forward: no input": (lambda _: _model()(), ValueError, "Pass exactly one of input_ids"),
    "forward: both inputs": (lambda _: _model()(input_ids=_ids(), inputs_embeds=torch.zeros(2, 6, 32)), ValueError, "Pass exactly one of input_ids"),
    "forward: 1-D ids": (lambda _: _model()(input_ids=torch.tensor([5, 6, 7])), ValueError, r"\[batch, length\].*unsqueeze\(0\)"),
    "forward: 3-D ids": (lambda _: _model()(input_ids=torch.ones(2, 3, 4, dtype=torch.long)), ValueError, r"input_ids must be \[batch, length\]"),
    "forward: 4-D mask": (_forward(input_ids=_ids(), attention_mask=torch.ones(2, 1, 6, 6)), ValueError, "2-D .*padding mask"),
    "forward: mask shape": (_forward(input_ids=_ids(), attention_mask=torch.ones(2, 5)), ValueError, r"attention_mask has shape \(2, 5\); expected \(2, 6\)"),
    "forward: labels shape": (_forward(input_ids=_ids(), labels=torch.ones(2, 5, dtype=torch.long)), ValueError, r"labels has shape \(2, 5\)"),
    "forward: shift_labels shape": (_forward(input_ids=_ids(), shift_labels=torch.ones(3, 6, dtype=torch.long)), ValueError, r"shift_labels has shape \(3, 6\)"),
    "forward: module name": (_forward(input_ids=_ids(), module="router"), ValueError, "module must be None .*got 'router'"),
    "forward: module index": (_forward(input_ids=_ids(), module=5), ValueError, r"domain index in \[0, 1\], got 5"),
    "forward: module bool": (_forward(input_ids=_ids(), module=True), ValueError, "module must be None"),
    "forward: invariant ablated": (lambda _: _model(use_invariant_module=False)(input_ids=_ids(), module="invariant"), ValueError, "use_invariant_module=False"),
    "forward: domain_ids length": (_forward(input_ids=_ids(), domain_ids=torch.tensor([0])), ValueError, r"one domain index in \[0, 1\] per sequence \(2\)"),
    "forward: domain_ids range": (_forward(input_ids=_ids(), domain_ids=torch.tensor([0, 2])), ValueError, r"domain index in \[0, 1\]"),
    "forward: domain_ids negative": (_forward(input_ids=_ids(), domain_ids=torch.tensor([-1, 0])), ValueError, "domain index"),
    "forward: domain_ids float": (_forward(input_ids=_ids(), domain_ids=torch.tensor([0.7, 1.2])), ValueError, r"integer domain indices.*\.long\(\)"),
    "forward: domain_ids vs module": (_forward(input_ids=_ids(), domain_ids=torch.tensor([0, 0]), module=1), ValueError, "contradict it"),
    "forward: labels = ids, no prefix": (lambda _: _model(router_prefix_length=None)(input_ids=_ids(), labels=_ids()), ValueError, "router_prefix_length"),
    "forward: packed with cache": (lambda _: _packed_with_cache(), ValueError, "packed sequences.*use_cache=False"),
    "forward: cache of another module": (lambda _: _continue(_cache_from(module="invariant")), ValueError, "another module= run"),
    "forward: cache without routes": (lambda _: _without_routes(), ValueError, "needs the prompt's routes"),
    "forward: backbone in training without prompt": (lambda _: _backbone_in_training(), ValueError, "IclmSFTTrainer"),
    # generate
    "generate: token level without cache": (lambda _: _model(routing_level="token").generate(_ids(), use_cache=False, max_new_tokens=2), ValueError, "use_cache=True"),
    "forward: 4-D mask on an empty cache": (lambda _: _model()(input_ids=_ids(), attention_mask=torch.ones(2, 1, 6, 6)), ValueError, "4-D mask is taken only in the decoding steps"),
    "generate: domain_ids length": (lambda _: _model().generate(_ids(), domain_ids=torch.tensor([0, 1, 1]), max_new_tokens=2), ValueError, "per sequence"),
    "generate: module name": (lambda _: _model().generate(_ids(), module="nope", max_new_tokens=2), ValueError, "module must be None"),
    # save and load
    "save: into a file": (_save_into_a_file, NotADirectoryError, "it is a file, not a folder"),
    "load: pickles only": (_pickled_only, ValueError, r"pickled weights \(pytorch_model\.bin\).*never unpickles"),
    "load: truncated safetensors": (_truncated, ValueError, "not a readable safetensors checkpoint.*save the model again"),
    "load: pickle named .safetensors": (_pickle_named_safetensors, ValueError, "not a readable safetensors checkpoint"),
    "load: corrupt trained parts": (_truncated_by_reference, ValueError, "model.safetensors is not a readable safetensors"),
    "load: newer format": (_newer_format, ValueError, "format version 99, newer than this code reads"),
    "load: other base weights": (_other_base, ValueError, "trained on another base.*embedding_sha256.*ignore_base_mismatch=True"),
    "load: other vocabulary": (_other_vocabulary, ValueError, r"vocab_size: trained on 97, loaded 137"),
    "load: base gone": (_missing_base, OSError, "stores only its trained parts.*base_model_name_or_path"),
    "load: other module count": (_other_module_count, ValueError, "Incompatible ICLM checkpoint.*module count"),
    # trainer
    "trainer: not an ICLM": (lambda p: _trainer(p, model=tiny_llama()), TypeError, "trains an IclmForCausalLM.*from_base"),
    "trainer: plain arguments": (lambda p: _trainer(p, args=TrainingArguments(output_dir=str(p), report_to="none")), TypeError, "IclmTrainingArguments"),
    "trainer: negative weight": (lambda p: _trainer(p, mi_loss_weight=-1.0), ValueError, "mi_loss_weight must be a finite number >= 0"),
    "trainer: router_init": (lambda p: _trainer(p, router_init="pca"), ValueError, "router_init must be 'kmeans' or 'random'"),
    "trainer: dead steps": (lambda p: _trainer(p, dead_centroid_steps=-1), ValueError, "dead_centroid_steps must be >= 0"),
    "trainer: empty data": (lambda p: _trainer(p, dataset=Dataset.from_list([])), ValueError, "training data set is empty"),
    "trainer: no labels": (lambda p: _trainer(p, collator=_no_labels_collator), ValueError, "have no `labels`"),
    "trainer: oracle without domains": (lambda p: _trainer(p, dataset=Dataset.from_list([{k: v for k, v in r.items() if k != "domain_id"} for r in two_domain_rows(8)]), use_oracle_routing=True), ValueError, "use_oracle_routing=True .*domain_id"),
    "trainer: kmeans without prompts": (lambda p: _trainer(p, router_init_samples=1).initialize_router(), ValueError, "needs at least 2 prompts.*router_init='random'"),
    "trainer: push without repo": (lambda p: _trainer(p).push_to_hub(), ValueError, "needs a repository id.*hub_model_id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error(case, tmp_path):
    action, error, message = CASES[case]
    with pytest.raises(error, match=message):
        action(tmp_path)


# ------------------------------------------------------------------------------- handled correctly
def test_ignore_base_mismatch_loads_anyway(tmp_path):
    model = _other_base(tmp_path, ignore_base_mismatch=True)
    assert model(input_ids=_ids()).logits.shape == (2, 6, VOCAB)


def test_an_all_padding_row_is_handled():
    """A row without a single attended token has no prompt: it routes nowhere in particular and adds no loss."""
    inputs = batch()
    inputs["attention_mask"][1] = 0
    inputs["labels"][1] = -100
    out = _model()(**inputs)
    rest = _model()(**{k: v[[0, 2, 3]] for k, v in inputs.items()})
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.lm_loss, rest.lm_loss)
    torch.testing.assert_close(out.commitment_loss, rest.commitment_loss)


def test_a_streamed_dataset_trains_end_to_end(tmp_path):
    """IterableDataset: the label check and the k-means codebook use its first rows."""
    rows = two_domain_rows(32)
    stream = IterableDataset.from_generator(lambda: iter(rows))
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    trainer = _trainer(tmp_path, model=model, dataset=stream, router_init_samples=16, max_steps=3)
    before = model.router.codebook.detach().clone()
    trainer.train()
    assert trainer.state.global_step == 3 and not torch.equal(before, model.router.codebook)
    assert len(trainer._recent_embeddings) > 0
