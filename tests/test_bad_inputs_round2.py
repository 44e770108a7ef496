"""Bad input, round II (issue 18, and issue 17 items 7-8): the continual workflow keeps its freeze, checkpoints see a
changed base, rows that would train on nothing are named, the command lines name what is wrong. Each case either
raises a specific error whose message names the problem and the fix, or is handled correctly."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import VOCAB, batch, make_trained, tiny_gpt2, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset

from iclm.cli import main
from iclm.sources import check_context_window, check_iclm_folder, context_window
from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from router_iclm import Routing
from trainer_iclm import IclmTrainer, IclmTrainingArguments

ROUTER_DIM = 64


def _model(**overrides):
    return make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0, **overrides)).eval()


def _grow(embeddings):
    return _model().add_domain_module(embeddings)


def _routing():
    return _model().route(**batch())


def _ids(rows=2, length=6):
    return batch(batch_size=rows, length=length)["input_ids"]


def _one_token_prompt(**kwargs):
    ids = _ids(2, 6)
    labels = ids.clone()
    labels[:, :1] = -100  # a one-token prompt, the answer after it
    return _model()(input_ids=ids, labels=labels, **kwargs)


def _short_language_rows():
    ids = _ids(2, 10)  # labels = input_ids on 10-token rows: the router reads 16, nothing is left
    return _model()(input_ids=ids, labels=ids)


def _short_packed_documents():
    ids = torch.arange(3, 23)[None]
    positions = torch.cat([torch.arange(8), torch.arange(12)])[None]
    return _model()(input_ids=ids, labels=ids, position_ids=positions)


def _trainer(tmp_path, model, rows=None, collator=None, **overrides):
    options = dict(output_dir=str(tmp_path), report_to="none", max_steps=2, per_device_train_batch_size=4,
                   router_init_samples=8, save_strategy="no")
    options.update(overrides)
    return IclmTrainer(model=model, args=IclmTrainingArguments(**options),
                       train_dataset=Dataset.from_list(rows or two_domain_rows(8)),
                       data_collator=collator or AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64))


def _fully_frozen(tmp_path):
    model = _model()
    model.freeze_modules(list(model.config.module_names))
    return _trainer(tmp_path, model).train()


def _kmeans_on_frozen(tmp_path):
    model = _model()
    model.add_domain_module()
    model.freeze_modules(["domain_0", "domain_1"])
    return _trainer(tmp_path, model).initialize_router()


def _merged_base(tmp_path):
    """A by-reference checkpoint loaded onto its base with a change merged into a decoder layer (embeddings equal)."""
    tiny_llama().save_pretrained(tmp_path / "base")
    IclmForCausalLM.from_base(str(tmp_path / "base"), num_domains=2).save_pretrained(tmp_path / "iclm")
    changed = tiny_llama()
    with torch.no_grad():
        changed.model.layers[1].self_attn.o_proj.weight.add_(0.05)
    changed.save_pretrained(tmp_path / "merged")
    return IclmForCausalLM.from_pretrained(tmp_path / "iclm", base_model_name_or_path=str(tmp_path / "merged"))


def _short_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "short")
    return tmp_path / "short"


def _cli(argv):
    code = main(argv)
    if code:
        raise ValueError(f"exit {code}")
    return code


def _continual_on_short_base(tmp_path):
    return main(["continual", "--preset", "smoke", "--out", str(tmp_path / "o"), "--base-model",
                 str(_short_gpt2(tmp_path))])


def _continual_cache_dir_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return main(["continual", "--preset", "smoke", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "file")])


def _interventions_on(tmp_path, folder):
    return main(["interventions", "--model", str(folder), "--out", str(tmp_path / "o")])


def _plain_llama(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


CASES = {
    # add_domain_module: what it is given must be router embeddings [n >= 1, router_dim], finite
    "grow: empty batch": (lambda _: _grow(torch.zeros(0, ROUTER_DIM)), ValueError, "got no embedding.*NaN"),
    "grow: hidden states": (lambda _: _grow(torch.randn(3, 32)), ValueError, "look like hidden states.*route"),
    "grow: per-token hidden states": (lambda _: _grow(torch.randn(2, 5, 32)), ValueError, r"shape \(2, 5, 32\).*hidden states"),
    "grow: logits": (lambda _: _grow(torch.randn(3, VOCAB)), ValueError, "look like logits"),
    "grow: one embedding without batch": (lambda _: _grow(torch.randn(ROUTER_DIM)), ValueError, r"unsqueeze\(0\)"),
    "grow: the Routing object": (lambda _: _grow(_routing()), TypeError, r"Routing object itself.*\.embeddings"),
    "grow: a list": (lambda _: _grow([[0.1] * ROUTER_DIM]), TypeError, "float tensor.*got list"),
    "grow: integer tensor": (lambda _: _grow(torch.ones(2, ROUTER_DIM, dtype=torch.long)), TypeError, "float tensor.*torch.int64"),
    "grow: NaN": (lambda _: _grow(torch.full((2, ROUTER_DIM), float("nan"))), ValueError, "NaN or infinite"),
    "grow: inf": (lambda _: _grow(torch.full((2, ROUTER_DIM), float("inf"))), ValueError, "NaN or infinite"),
    "grow: wrong router size": (lambda _: _grow(torch.randn(2, 16)), ValueError, r"router_dim=64\], got shape \(2, 16\)"),
    # anchor_invariant: a finite number >= 0
    "anchor: negative": (lambda _: _model().anchor_invariant(-1.0), ValueError, "finite number >= 0.*got -1.0"),
    "anchor: nan": (lambda _: _model().anchor_invariant(float("nan")), ValueError, "finite number >= 0.*nan"),
    "anchor: inf": (lambda _: _model().anchor_invariant(float("inf")), ValueError, "finite number >= 0"),
    "anchor: string": (lambda _: _model().anchor_invariant("1"), ValueError, "finite number >= 0.*'1'"),
    "anchor: bool": (lambda _: _model().anchor_invariant(True), ValueError, "finite number >= 0.*True"),
    "anchor: None": (lambda _: _model().anchor_invariant(None), ValueError, "finite number >= 0.*None"),
    # forward: rows that would train on nothing, prompts the router cannot read
    "forward: zero-length ids": (lambda _: _model()(input_ids=torch.zeros(2, 0, dtype=torch.long)), ValueError, r"hold no token \(shape \(2, 0\)\)"),
    "forward: zero-length embeddings": (lambda _: _model()(inputs_embeds=torch.zeros(2, 0, 32)), ValueError, "hold no token"),
    "forward: zero-length with mask": (lambda _: _model()(input_ids=torch.zeros(1, 0, dtype=torch.long), attention_mask=torch.zeros(1, 0)), ValueError, "hold no token"),
    "forward: one-token prompt": (lambda _: _one_token_prompt(), ValueError, r"Sequence\(s\) \[0, 1\] have a one-token prompt.*domain_ids"),
    "route: one-token prompt": (lambda _: _model().route(input_ids=_ids(), labels=torch.cat([torch.full((2, 1), -100), _ids()[:, 1:]], 1)), ValueError, "one-token prompt"),
    "forward: language rows shorter than the prefix": (lambda _: _short_language_rows(), ValueError, r"2 sequence\(s\) labelled from their start.*router_prefix_length=16.*silent 0"),
    "forward: short packed documents": (lambda _: _short_packed_documents(), ValueError, r"2 sequence\(s\) labelled from their start"),
    # load: the fingerprint covers every base tensor
    "load: base with a merged change": (_merged_base, ValueError, "trained on another base.*weights_sha256"),
    # trainer: the freeze holds
    "trainer: everything frozen": (_fully_frozen, ValueError, "Nothing to train.*freeze_modules"),
    "trainer: k-means over frozen centroids": (_kmeans_on_frozen, ValueError, r"frozen centroid\(s\) of \['domain_0', 'domain_1'\].*router_init='random'"),
    # sources: context windows
    "context: short GPT-2": (lambda p: check_context_window(str(_short_gpt2(p)), 1539, "evaluation rows"), ValueError, "context window is 64 tokens \\(n_positions.*need\\(s\\) 1539"),
    "context: ICLM config": (lambda _: check_context_window({"model_type": "iclm", "text_config": {"max_position_embeddings": 128}}, 512, "rows"), ValueError, "128 tokens"),
    "iclm folder: plain Llama": (lambda p: check_iclm_folder(_plain_llama(p)), ValueError, "holds a 'llama' model, not an ICLM.*from_base"),
    "iclm folder: missing": (lambda p: check_iclm_folder(p / "nowhere" / "x"), FileNotFoundError, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error(case, tmp_path):
    action, error, message = CASES[case]
    with pytest.raises(error, match=message):
        action(tmp_path)


# Command lines: exit 1 and one line naming the problem, before any work.
CLI_CASES = {
    "bench: no generation repeats": (["bench", "--gen-repeats", "0"], "--gen-repeats must be >= 1, got 0"),
    "bench: negative warm-up": (["bench", "--warmup", "-1"], "--warmup must be >= 0"),
    "bench: quick with steps": (["bench", "--quick", "--steps", "5"], "--quick .* would override --steps"),
    "bench: quick with batch and seq": (["bench", "--quick", "--batch", "2", "--seq", "64"], "override --batch, --seq"),
    "bench: quick with repeats": (["bench", "--quick", "--gen-repeats", "0"], "override --gen-repeats"),
    "lm-eval: missing folder": (["lm-eval", "--model", "iclm", "--model_args", "pretrained=/nonexistent/iclm/run",
                                 "--tasks", "x"], "pretrained: the folder '/nonexistent/iclm/run' does not exist"),
    "lm-eval: missing folder, = form": (["lm-eval", "--model=iclm", "--model_args=pretrained=./no/such/run,dtype=float32",
                                         "--tasks", "x"], "does not exist"),
    "lm-eval: relative name offline": (["lm-eval", "--model", "iclm", "--model_args", "pretrained=runs/missing",
                                        "--tasks", "x"], "not a local folder.*offline"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_command_line_is_one_clear_line(case, capsys):
    argv, message = CLI_CASES[case]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err


def test_continual_refuses_a_short_context_base_before_training(tmp_path, capsys):
    assert _continual_on_short_base(tmp_path) == 1
    err = capsys.readouterr().err
    assert "context window is 64 tokens" in err and "eval_max_length 1536" in err
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_continual_names_a_cache_dir_that_is_a_file(tmp_path, capsys):
    assert _continual_cache_dir_file(tmp_path) == 1
    assert "--cache-dir" in capsys.readouterr().err


def test_interventions_names_a_folder_that_is_not_an_iclm(tmp_path, capsys):
    assert _interventions_on(tmp_path, _plain_llama(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "holds a 'llama' model, not an ICLM" in err and "from_base" in err


def test_lm_eval_warns_when_its_hf_class_is_given_an_iclm(tmp_path, capsys):
    from iclm.cli import _check_lm_eval_model

    _model().save_pretrained(tmp_path / "iclm")
    _check_lm_eval_model(["--model", "hf", "--model_args", f"pretrained={tmp_path / 'iclm'}", "--tasks", "x"])
    assert "--model iclm" in capsys.readouterr().err
    _check_lm_eval_model(["--model", "iclm", "--model_args", f"pretrained={tmp_path / 'iclm'}"])
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------- handled correctly
def test_valid_embeddings_still_grow_the_model():
    model = _model()
    routing = model.route(**batch())
    assert model.add_domain_module(routing.embeddings) == "domain_2"
    assert model.add_domain_module(routing.embeddings[:1].double()) == "domain_3"  # one row, another float dtype
    assert torch.isfinite(model.router.codebook).all() and model.config.num_domains == 4


@pytest.mark.parametrize("weight", [0, 0.0, 2, np.float64(0.5)])
def test_anchor_invariant_takes_finite_non_negative_numbers(weight):
    model = _model()
    model.anchor_invariant(weight)
    assert (model.model._invariant_anchor is None) == (weight == 0)


def test_a_one_token_prompt_with_given_routes_is_scored():
    out = _one_token_prompt(domain_ids=torch.tensor([0, 1]))
    assert torch.isfinite(out.loss) and out.lm_loss > 0  # its answer tokens are targets, none dropped


def test_labels_on_padding_are_not_targets():
    inputs = batch()
    inputs["attention_mask"][1, 8:] = 0  # right padding on row 1, whose labels still name those tokens
    padded = _model()(**inputs)
    clean = dict(inputs, labels=inputs["labels"].masked_fill(inputs["attention_mask"] == 0, -100))
    expected = _model()(**clean)
    torch.testing.assert_close(padded.loss, expected.loss)
    inputs["attention_mask"][1] = 0  # an all-padding row with labels: adds nothing
    rest = _model()(**{k: v[[0, 2, 3]] for k, v in inputs.items()})
    torch.testing.assert_close(_model()(**inputs).lm_loss, rest.lm_loss)


def test_vq_term_is_per_input_by_default_and_token_weighted_on_request():
    inputs = batch()
    inputs["labels"][0, 6:10] = inputs["input_ids"][0, 6:10]  # row 0: 6 answer tokens, the others 2
    per_input, per_token = _model()(**inputs), _model(commitment_weighting="token")(**inputs)
    losses = _model().route(**{k: v for k, v in inputs.items()}).sequence_losses
    torch.testing.assert_close(per_input.commitment_loss, losses.mean())
    weights = torch.tensor([6.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(per_token.commitment_loss, (losses * weights).sum() / weights.sum())


def test_rows_without_targets_inside_a_trainer_are_counted_once(tmp_path, caplog):
    tokenizer = word_tokenizer(vocabulary())
    rows = [{"text": " ".join(f"a{i % 12}" for i in range(n))} for n in (6, 30, 7, 30, 6, 30, 8, 30)]

    def collate(batch_rows):  # a language-modelling collator: labels = input_ids
        encoded = tokenizer([r["text"] for r in batch_rows], padding=True, return_tensors="pt")
        encoded["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return dict(encoded)

    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    trainer = _trainer(tmp_path, model, rows=rows, collator=collate, max_steps=2, logging_steps=1,
                       router_init="random")
    with caplog.at_level(logging.WARNING, logger="trainer_iclm"):
        trainer.train()
    warned = [r for r in caplog.records if "keep no target" in r.getMessage()]
    assert len(warned) == 1 and warned[0].getMessage().startswith("2 training sequence(s)")
    assert [e["rows_without_target"] for e in trainer.state.log_history if "rows_without_target" in e] == [2, 4]
    assert not model.model.count_rows_without_target  # outside the trainer such rows are refused again


def test_kmeans_skips_a_model_with_frozen_centroids_and_says_so(tmp_path, caplog):
    """The README's continual workflow with IclmTrainer's default arguments: the frozen centroids never move."""
    model = _model()
    model.add_domain_module(model.route(**batch(seed=5)).embeddings)
    model.freeze_modules(["domain_0", "domain_1"])
    before = model.router.codebook.detach().clone()
    with caplog.at_level(logging.WARNING, logger="trainer_iclm"):
        _trainer(tmp_path, model).train()
    assert torch.equal(model.router.codebook[:2], before[:2])
    assert any("router_init='kmeans' skipped" in r.getMessage() and "domain_0, domain_1" in r.getMessage()
               for r in caplog.records)


def test_a_partly_frozen_model_still_trains(tmp_path):
    model = _model()
    model.freeze_modules(["domain_0"])  # the rest trains
    _trainer(tmp_path, model, router_init="random").train()


def test_fingerprint_covers_every_tensor_and_ignores_dtype():
    from saving_iclm import base_fingerprint

    base = tiny_llama()
    first = base_fingerprint(base)
    assert first == base_fingerprint(tiny_llama()) == base_fingerprint(tiny_llama().to(torch.bfloat16))
    for name, tensor in base.state_dict().items():
        if name.endswith("norm.weight"):
            with torch.no_grad():
                tensor.add_(0.25)
            break
    changed = base_fingerprint(base)
    assert changed["weights_sha256"] != first["weights_sha256"]
    assert changed["embedding_sha256"] == first["embedding_sha256"]  # what the old fingerprint saw


def test_a_checkpoint_reloads_onto_its_own_base(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    model = IclmForCausalLM.from_base(str(tmp_path / "base"), num_domains=2)
    model.save_pretrained(tmp_path / "iclm")
    saved = json.loads((tmp_path / "iclm" / "config.json").read_text())["base_fingerprint"]
    assert "weights_sha256" in saved
    assert IclmForCausalLM.from_pretrained(tmp_path / "iclm") is not None
    assert IclmForCausalLM.from_pretrained(tmp_path / "iclm", dtype=torch.bfloat16) is not None


def test_a_checkpoint_saved_before_the_weights_hash_still_loads(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    IclmForCausalLM.from_base(str(tmp_path / "base"), num_domains=2).save_pretrained(tmp_path / "iclm")
    config = json.loads((tmp_path / "iclm" / "config.json").read_text())
    del config["base_fingerprint"]["weights_sha256"]
    (tmp_path / "iclm" / "config.json").write_text(json.dumps(config))
    assert IclmForCausalLM.from_pretrained(tmp_path / "iclm") is not None


def test_sft_trainer_converts_iclm_training_arguments(tmp_path):
    from iclm.trl import IclmSFTConfig, IclmSFTTrainer

    args = IclmTrainingArguments(output_dir=str(tmp_path), report_to="none", mi_loss_weight=0.5, max_steps=1,
                                 router_init="random", per_device_train_batch_size=4)
    trainer = IclmSFTTrainer(model=IclmForCausalLM.from_base(tiny_llama(), num_domains=2), args=args,
                             train_dataset=Dataset.from_list([{"prompt": "a1 a2 a3 ", "completion": "x1"}] * 4),
                             processing_class=word_tokenizer(vocabulary()))
    assert isinstance(trainer.args, IclmSFTConfig)
    assert (trainer.args.mi_loss_weight, trainer.args.router_init) == (0.5, "random")


def test_context_window_reads_each_family_and_passes_long_enough_bases():
    assert context_window(tiny_gpt2().config)[0] == 128
    assert context_window(tiny_llama().config) == (128, "max_position_embeddings")
    assert context_window({"model_type": "mamba"}) is None
    check_context_window(tiny_llama().config, 128, "rows")  # exactly enough
    check_context_window({"model_type": "mamba"}, 10 ** 6, "rows")  # no declared window: passes


def test_count_target_sequences_matches_what_the_loss_averages():
    model = _model()
    inputs = batch()
    inputs["labels"][3] = -100  # a row without targets
    assert model.count_target_sequences(**inputs) == 3
    ids = _ids(2, 30)
    assert model.count_target_sequences(input_ids=ids, labels=ids) == 2  # labelled from the start, 14 kept each
    assert math.isfinite(float(model(**inputs).commitment_loss))


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_the_experiments_presets_are_checked_against_a_short_base(preset, tmp_path):
    """What `iclm experiment` runs before anything trains (iclm.sources.check_preset_context on its preset)."""
    from iclm.experiment.presets import PRESETS
    from iclm.sources import check_preset_context

    with pytest.raises(ValueError, match=f"context window is 64 tokens.*the {preset} preset's training rows"):
        check_preset_context(str(_short_gpt2(tmp_path)), PRESETS[preset])
    check_preset_context({"model_type": "llama", "max_position_embeddings": 4096}, PRESETS[preset])
