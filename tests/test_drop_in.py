"""IclmForCausalLM as a drop-in transformers causal LM: the forward contract code written for Llama relies on.

Each test pins one item of that contract (kwargs passthrough, standard output fields, tuples, caches, the
deprecated ``past_key_values`` name, pre-shifted labels, packed batches, the backbone, the loss, the router's
prefix rule, the base's logit transform, dtype and tokenizer round trips, embedding resizing).
"""

import subprocess
import sys

import pytest
import torch
from conftest import VOCAB, batch, make_trained, tiny_llama, vocabulary, word_tokenizer
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling,
                          DataCollatorWithFlattening, LlamaForCausalLM, Trainer, TrainingArguments)

from modeling_iclm import IclmForCausalLM, IclmModel


def _model(num_domains=3, seed=0, **overrides):
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(seed), num_domains=num_domains, **overrides)).eval()
    model.router.codebook.data = torch.nn.functional.normalize(
        torch.randn(num_domains, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    return model


def _eager_model():
    base = tiny_llama()
    base.config._attn_implementation = "eager"
    return make_trained(IclmForCausalLM.from_base(base, num_domains=2)).eval()


# ----------------------------------------------------------------------- 1, 2: kwargs and standard fields
def test_attentions_and_hidden_states_are_the_standard_fields():
    model = _eager_model()
    inputs = batch()
    out = model(input_ids=inputs["input_ids"], output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and all(h.shape == (4, 12, 32) for h in out.hidden_states)  # embeddings + 2 layers
    assert len(out.attentions) == 2 and all(a.shape == (4, 4, 12, 12) for a in out.attentions)
    alone = model(input_ids=inputs["input_ids"], module="invariant", output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[1], alone.hidden_states[1])  # the invariant module's layer states
    domain = model(input_ids=inputs["input_ids"], module="domain", output_hidden_states=True, domain_ids=out.routes)
    assert len(domain.hidden_states) == 3 and not torch.allclose(domain.hidden_states[-1], out.hidden_states[-1])
    with_states = model(input_ids=inputs["input_ids"], output_hidden_states=True, output_attentions=True, return_dict=False)
    assert len(with_states) == len(model(input_ids=inputs["input_ids"], return_dict=False)) + 2  # just the two fields
    plain = model(input_ids=inputs["input_ids"])
    assert plain.hidden_states is None and plain.attentions is None


def test_every_dict_output_generation_mode_runs():
    model = _eager_model()
    inputs = batch(batch_size=2, answer=0)
    common = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                  output_hidden_states=True, output_attentions=True, output_scores=True, output_logits=True)
    greedy = model.generate(inputs["input_ids"], **common)
    assert greedy.sequences.shape == (2, 15) and len(greedy.scores) == len(greedy.logits) == 3
    assert len(greedy.hidden_states) == 3 and greedy.hidden_states[0][-1].shape == (2, 12, 32)
    assert len(greedy.attentions) == 3
    beams = model.generate(inputs["input_ids"], num_beams=2, **common)
    assert beams.sequences.shape[0] == 2 and beams.sequences_scores is not None
    sampled = model.generate(inputs["input_ids"], **{**common, "do_sample": True, "top_k": 5})
    assert sampled.sequences.shape == (2, 15)


# ------------------------------------------------------------------------------------ 3: resizing
def test_resize_token_embeddings_adds_tokens_and_round_trips(tmp_path):
    model = _model()
    before = model(input_ids=batch()["input_ids"]).logits
    model.resize_token_embeddings(VOCAB + 5)
    assert model.config.text_config.vocab_size == VOCAB + 5
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == VOCAB + 5
    ids = torch.tensor([[VOCAB + 4, 5, 6]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 3, VOCAB + 5)
    torch.testing.assert_close(model(input_ids=batch()["input_ids"]).logits[..., :VOCAB], before)  # old rows kept
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, logits)


# ------------------------------------------------------------------------ 4, 5: tuples, caches, names
def test_return_dict_false_gives_the_standard_tuple():
    model = _model()
    inputs = batch()
    out = model(**inputs)
    loss, logits, cache = model(**inputs, return_dict=False)[:3]
    torch.testing.assert_close(loss, out.loss)
    torch.testing.assert_close(logits, out.logits)
    assert cache.get_seq_length() == 12


def test_config_use_cache_is_the_default():
    model = _model()
    input_ids = batch()["input_ids"]
    assert model(input_ids=input_ids).cache is not None  # like LlamaForCausalLM: config.use_cache=True
    model.config.use_cache = False
    assert model(input_ids=input_ids).cache is None
    assert model(input_ids=input_ids, use_cache=True).cache is not None


def test_past_key_values_is_still_accepted():
    model = _model()
    input_ids = batch()["input_ids"]
    first = model(input_ids=input_ids[:, :8])
    with pytest.warns(FutureWarning, match="past_key_values"):
        old_name = model(input_ids=input_ids[:, 8:], past_key_values=first.cache)
    again = model(input_ids=input_ids[:, :8])
    new_name = model(input_ids=input_ids[:, 8:], cache=again.cache)
    torch.testing.assert_close(old_name.logits, new_name.logits)
    whole = model(input_ids=input_ids, domain_ids=first.routes).logits  # the same route as the prefix's
    torch.testing.assert_close(new_name.logits, whole[:, 8:], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------- 6, 7: shifted and packed
def test_shift_labels_give_the_same_loss():
    model = _model()
    inputs = batch()
    shifted = torch.nn.functional.pad(inputs["labels"][:, 1:], (0, 1), value=-100)
    out = model(**inputs)
    pre = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], shift_labels=shifted)
    torch.testing.assert_close(pre.loss, out.loss)
    torch.testing.assert_close(pre.commitment_loss, out.commitment_loss)
    assert torch.equal(pre.routes, out.routes)


def _rows(lengths=((7, 4), (10, 6), (5, 3)), seed=3):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length, prompt in lengths:
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _padded(rows):
    from torch.nn.utils.rnn import pad_sequence

    tensors = lambda key, value: pad_sequence([torch.tensor(r[key]) for r in rows], batch_first=True,  # noqa: E731
                                              padding_value=value)
    mask = pad_sequence([torch.ones(len(r["input_ids"]), dtype=torch.long) for r in rows], batch_first=True)
    return {"input_ids": tensors("input_ids", 0), "labels": tensors("labels", -100), "attention_mask": mask}


def test_packed_sequences_never_attend_across_boundaries_and_are_routed_one_by_one():
    model = _model()
    rows = _rows()
    packed = DataCollatorWithFlattening()(rows)
    assert "attention_mask" not in packed
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"])
        start, routes = 0, []
        for row in rows:
            alone = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            end = start + len(row["input_ids"])
            torch.testing.assert_close(out.logits[0, start:end], alone.logits[0], atol=1e-5, rtol=1e-4)
            assert torch.equal(out.token_routes[0, start:end], alone.routes.expand(end - start))
            routes += alone.routes.tolist()
            start = end
        assert out.routes.tolist() == routes and len(set(routes)) > 1
        padded = model(**_padded(rows))
    for name in ("loss", "lm_loss", "commitment_loss", "mi_loss", "invariant_loss", "domain_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(padded, name), atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="packed sequences"):
        model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True)


# ------------------------------------------------------------------------------------ 8: the backbone
def test_the_backbone_returns_the_aggregated_state_the_head_reads():
    model = _model()
    inputs = batch()
    assert isinstance(model.base_model, IclmModel) and model.base_model is model.model
    state = model.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    torch.testing.assert_close(model.get_output_embeddings()(state), model(**inputs).logits)
    model.train()
    model.base_model(input_ids=inputs["input_ids"])  # a feature extractor in training: routes on every token
    model.forward = model.forward  # what TRL's fused LM head does (it then calls the backbone without labels)
    with pytest.raises(ValueError, match="IclmSFTTrainer"):  # the router would read the completion: refused
        model.base_model(input_ids=inputs["input_ids"])


# ---------------------------------------------------------------------------- 9: the whole objective
def test_loss_is_the_whole_objective_with_the_config_weights():
    model = _model(commitment_loss_weight=0.3, mi_loss_weight=0.2, invariant_loss_weight=0.4, domain_loss_weight=0.5)
    out = model(**batch())
    expected = (out.lm_loss + 0.3 * out.commitment_loss + 0.2 * out.mi_loss + 0.4 * out.invariant_loss
                + 0.5 * out.domain_loss)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.aux_loss, expected - out.lm_loss)
    assert out.mi_loss != 0 and out.commitment_loss > 0  # the debiased MI estimate may be negative
    model.config.mi_loss_weight = model.config.commitment_loss_weight = 0.0
    model.config.invariant_loss_weight = model.config.domain_loss_weight = 0.0
    torch.testing.assert_close(model(**batch()).loss, out.lm_loss)


def test_a_plain_trainer_trains_router_and_both_modules(tmp_path):
    """No IclmTrainer: the model's own loss moves the codebook (VQ term) and the invariant and domain adapters."""
    from iclm.tasks import AnswerOnlyCollator
    from conftest import two_domain_rows

    tokenizer = word_tokenizer(vocabulary())
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("model.base.")}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-2,
                             report_to="none", save_strategy="no", remove_unused_columns=False, logging_steps=1)
    collator = AnswerOnlyCollator(tokenizer, max_length=64, padding_side="right")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(two_domain_rows(24)), data_collator=collator)
    trainer.train()
    moved = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert "model.router.codebook" in moved and "model.router.projection.weight" in moved
    assert any(".adapters.invariant.lora_B" in k for k in moved)
    assert any(".adapters.domain_0.lora_B" in k or ".adapters.domain_1.lora_B" in k for k in moved)


# ------------------------------------------------------------------------ 11: labels = input_ids
def test_fully_labelled_rows_route_on_a_prefix_that_is_never_predicted():
    model = _model(router_prefix_length=5)
    inputs = batch(batch_size=3)
    ids = inputs["input_ids"]
    out = model(input_ids=ids, labels=ids.clone())
    prefix = model.model.route(input_ids=ids[:, :5])  # the router reads the first 5 tokens alone
    assert torch.equal(out.routes, prefix.routes)
    changed = ids.clone()
    changed[:, 5:] = torch.randint(3, VOCAB, changed[:, 5:].shape, generator=torch.Generator().manual_seed(9))
    assert torch.equal(model(input_ids=changed, labels=changed.clone()).routes, out.routes)  # no later token counts
    # Tokens 1..4 were read by the router: they are not targets. The loss is the CE of tokens 5.. only.
    expected_labels = ids.clone()
    expected_labels[:, :5] = -100
    torch.testing.assert_close(out.loss, model(input_ids=ids, labels=expected_labels).loss)
    strict = _model(router_prefix_length=None)
    with pytest.raises(ValueError, match="router_prefix_length"):
        strict(input_ids=ids, labels=ids.clone())


def test_data_collator_for_language_modeling_trains(tmp_path):
    tokenizer = word_tokenizer(vocabulary())
    texts = [" ".join(row["prompt"].split() + row["answer"].split()) for row in __import__("conftest").two_domain_rows(16)]
    dataset = Dataset.from_dict(tokenizer(texts))
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, router_prefix_length=3)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to="none",
                             save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))


# ------------------------------------------------------------------------ 12: the base's logit transform
def test_a_base_with_an_unknown_logit_transform_is_refused():
    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    base = Scaled(tiny_llama().config)
    with pytest.raises(ValueError, match="computes its logits in a way ICLM does not reproduce"):
        IclmForCausalLM.from_base(base, num_domains=2)


# ------------------------------------------------------------------------------- 13, 14: round trips
def test_a_bfloat16_base_comes_back_bfloat16_with_the_same_logits(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")  # a float32 checkpoint
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16)
    model = make_trained(IclmForCausalLM.from_base(base, num_domains=2)).eval()
    ids = batch()["input_ids"]
    logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "iclm")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "iclm", trust_remote_code=True)
    assert reloaded.base.dtype == torch.bfloat16 and reloaded.router.codebook.dtype == torch.float32
    torch.testing.assert_close(reloaded(input_ids=ids).logits, logits)


def test_the_tokenizer_travels_with_the_model(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    word_tokenizer(vocabulary()).save_pretrained(tmp_path / "base")
    model = IclmForCausalLM.from_base(str(tmp_path / "base"), num_domains=2)
    model.save_pretrained(tmp_path / "iclm")
    assert AutoTokenizer.from_pretrained(tmp_path / "iclm").get_vocab() == AutoTokenizer.from_pretrained(
        tmp_path / "base").get_vocab()
    # and from a reloaded ICLM to its next folder, in a fresh process (no state kept in this one)
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer;"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'iclm')!r}, trust_remote_code=True);"
            f"m.save_pretrained({str(tmp_path / 'again')!r});"
            f"print(len(AutoTokenizer.from_pretrained({str(tmp_path / 'again')!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == len(AutoTokenizer.from_pretrained(tmp_path / "base"))
