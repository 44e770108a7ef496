"""IclmTrainer: real Trainer runs of a few steps on a tiny Llama, with the project's collator."""

import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset
from transformers import AutoModelForCausalLM, HfArgumentParser, TrainerCallback

from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments


def _setup(tmp_path, rows=32, num_domains=2, seed=0, **overrides):
    tokenizer = word_tokenizer(vocabulary())
    model = IclmForCausalLM.from_base(tiny_llama(seed), num_domains=num_domains, lora_dropout=0.0)
    dataset = Dataset.from_list(two_domain_rows(rows))
    options = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=5e-3,
                   max_steps=4, logging_steps=1, report_to="none", save_strategy="no", seed=seed,
                   router_init_samples=32, disable_tqdm=True)
    options.update(overrides)
    args = IclmTrainingArguments(**options)
    collator = AnswerOnlyCollator(tokenizer, max_length=64, padding_side="right")
    trainer = IclmTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=tokenizer, domain_names=["words a", "words b"])
    return trainer, model


def test_training_logs_every_component_and_router_health(tmp_path):
    trainer, model = _setup(tmp_path)
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    lora_before = [p.clone() for p in model.lora.parameters()]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        for key in ("commitment_loss", "mi_loss", "invariant_loss", "domain_loss", "codebook_perplexity",
                    "route_share/domain_0", "route_share/domain_1"):
            assert key in entry and entry[key] == entry[key], key  # present and not NaN
        assert entry["route_share/domain_0"] + entry["route_share/domain_1"] == pytest.approx(1.0, abs=1e-3)
        shares = torch.tensor([entry["route_share/domain_0"], entry["route_share/domain_1"]])
        shares = shares[shares > 0]
        assert entry["codebook_perplexity"] == pytest.approx(float(torch.exp(-(shares * shares.log()).sum())), abs=2e-3)
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, model.lora.parameters()))


def test_kmeans_initialisation_separates_clear_domains(tmp_path):
    trainer, model = _setup(tmp_path, rows=64)
    trainer.initialize_router()
    rows = two_domain_rows(64)
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        routes = model.route(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).routes
    truth = batch["domain_ids"]
    agreement = (routes == truth).float().mean().item()
    assert max(agreement, 1 - agreement) >= 0.9  # the clusters are the domains, up to the centroid order


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """SGD (so step size is proportional to the gradient); MI off: it is a batch statistic, estimated per micro-batch."""
    common = dict(rows=8, max_steps=1, optim="sgd", learning_rate=0.5, mi_loss_weight=0.0, logging_steps=100)
    full, full_model = _setup(tmp_path / "a", per_device_train_batch_size=8, **common)
    accumulated, accumulated_model = _setup(tmp_path / "b", per_device_train_batch_size=4,
                                            gradient_accumulation_steps=2, **common)
    full.train()
    accumulated.train()
    moved = 0.0
    for (name, a), b in zip(full_model.named_parameters(), accumulated_model.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
    for a, b in zip(full_model.lora.parameters(), IclmForCausalLM.from_base(tiny_llama(0), 2).lora.parameters()):
        moved += (a - b).abs().sum().item() if a.shape == b.shape else 0
    assert moved > 0


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, dead_centroid_steps=2)
    straight, _ = _setup(tmp_path / "straight", **common)
    straight.train()
    interrupted, _ = _setup(tmp_path / "interrupted", **common)
    interrupted.add_callback(StopAt(3))  # the run dies after step 3 (its checkpoint is written)
    interrupted.train()
    checkpoint = tmp_path / "interrupted" / "out" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "iclm_router_state.json").exists()
    assert (checkpoint / "training_args.json").exists() and not (checkpoint / "training_args.bin").exists()
    latest, _ = _setup(tmp_path / "interrupted", **common)
    latest.train(resume_from_checkpoint=True)  # the newest checkpoint of output_dir: checkpoint-3
    assert latest._last_used == straight._last_used and torch.equal(latest._captured, straight._captured)
    resumed, resumed_model = _setup(tmp_path / "interrupted", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    losses = {e["step"]: e["loss"] for e in straight.state.log_history if "loss" in e}
    again = {e["step"]: e["loss"] for e in resumed.state.log_history if "loss" in e and e["step"] > 3}
    assert sorted(again) == [4, 5, 6]
    for step, loss in again.items():
        assert loss == pytest.approx(losses[step], rel=1e-4, abs=1e-5), step
    assert resumed._last_used == straight._last_used and torch.equal(resumed._captured, straight._captured)


def test_dead_centroids_restart_and_collapse_is_reported(tmp_path, caplog):
    trainer, model = _setup(tmp_path, num_domains=3, router_init="random", dead_centroid_steps=1, max_steps=3)
    with torch.no_grad():  # centroid 2 sits where no unit-norm embedding can be nearest: it is dead
        model.router.codebook.data = torch.zeros(3, 64)
        model.router.codebook.data[2] = 100.0
    with caplog.at_level(logging.WARNING, logger="trainer_iclm"):
        trainer.train()
    assert model.router.codebook.data[2].norm().item() < 10  # moved onto a real prompt embedding
    assert any("Restarted dead router centroid" in r.message for r in caplog.records)
    assert any("Routing collapsed" in r.message for r in caplog.records)


def test_dead_centroids_restart_from_recent_embeddings_with_fresh_optimizer_moments(tmp_path):
    trainer, model = _setup(tmp_path, num_domains=3, dead_centroid_steps=2, max_steps=4)
    trainer.train()
    initial = trainer._recent_embeddings
    assert not trainer._pool_is_initial and len(initial) == 4 * 8  # the k-means sample is gone: 4 steps' prompts
    moments = trainer.optimizer.optimizer.state[model.router.codebook]
    assert moments["exp_avg"][2].abs().sum() > 0
    trainer._last_used[2] = -10  # centroid 2 unused for long
    trainer._restart_dead_centroids()
    assert any(torch.equal(model.router.codebook.data[2], row) for row in trainer._recent_embeddings)
    assert moments["exp_avg"][2].abs().sum() == 0 and moments["exp_avg_sq"][2].abs().sum() == 0
    assert moments["exp_avg"][0].abs().sum() > 0  # the others keep theirs


def test_oracle_routing_uses_the_data_domains(tmp_path):
    trainer, model = _setup(tmp_path, use_oracle_routing=True, router_init="random", max_steps=2)
    trainer.train()
    assert trainer.captured_domains() == {"domain_0": {"words a": 1.0}, "domain_1": {"words b": 1.0}}


def test_every_argument_has_help_and_parses_from_the_command_line(tmp_path):
    parser = HfArgumentParser(IclmTrainingArguments)
    for name in ("commitment_loss_weight", "mi_loss_weight", "invariant_loss_weight", "domain_loss_weight",
                 "router_init", "router_init_samples", "dead_centroid_steps", "use_oracle_routing"):
        action = next(a for a in parser._actions if a.dest == name)
        assert action.help, name
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--mi_loss_weight", "0.5",
                                                  "--router_init", "random", "--report_to", "none"])
    assert args.mi_loss_weight == 0.5 and args.commitment_loss_weight is None and args.router_init == "random"


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mi_loss_weight must be a finite number >= 0"):
        IclmTrainingArguments(output_dir=str(tmp_path), mi_loss_weight=-1.0)
    with pytest.raises(ValueError, match="router_init must be"):
        IclmTrainingArguments(output_dir=str(tmp_path), router_init="pca")
    args = IclmTrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(TypeError, match="IclmForCausalLM.from_base"):
        IclmTrainer(model=tiny_llama(), args=args)
    tokenizer = word_tokenizer(vocabulary())
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    no_labels = Dataset.from_list([{"input_ids": [4, 5, 6], "attention_mask": [1, 1, 1]}] * 4)
    with pytest.raises(ValueError, match="no `labels`"):
        IclmTrainer(model=model, args=args, train_dataset=no_labels)
    trainer, model = _setup(tmp_path, rows=4, num_domains=5, router_init_samples=4)
    with pytest.raises(ValueError, match="needs at least 5 prompts, got 4"):
        trainer.train()


@pytest.fixture
def hub(monkeypatch):
    """A stand-in for the Hub client (``HfApi`` in hub_iclm, ``hf_api`` in the Trainer): records every call
    and, for uploads, the folder's files and card as they were when uploaded."""
    import transformers.trainer

    import hub_iclm

    calls = []

    class RecordingHub:
        def __init__(self, token=None):
            calls.append({"call": "init", "token": token})

        def create_repo(self, repo_id, **kwargs):
            calls.append({"call": "create_repo", "repo": repo_id})
            return SimpleNamespace(repo_id=f"me/{repo_id}")  # the Trainer names its repo after output_dir

        def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
            files = {os.path.relpath(os.path.join(d, f), folder_path) for d, _, names in os.walk(folder_path)
                     for f in names}
            calls.append({"call": "upload_folder", "repo": repo_id, "folder": folder_path, "message": commit_message,
                          "files": files, "card": open(os.path.join(folder_path, "README.md")).read()})
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(hub_iclm, "HfApi", RecordingHub)
    monkeypatch.setattr(transformers.trainer, "hf_api", RecordingHub)
    return calls


def uploads(calls):
    return [call for call in calls if call["call"] == "upload_folder"]


def test_push_to_hub_uploads_the_routed_adapters_and_our_card(tmp_path, hub):
    trainer, model = _setup(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="hub_model_id"):
        trainer.push_to_hub()
    trainer.train()
    url = trainer.push_to_hub(repo_id="user/iclm-test", training_data="two toy domains",
                              eval_results=[{"task": "acre", "split": "comp", "ood": True, "accuracy": 0.5}])
    assert url.endswith("/commit/0")
    repo, folder, files = hub[-1]["repo"], hub[-1]["folder"], hub[-1]["files"]
    assert repo == "user/iclm-test" and [c["call"] for c in hub] == ["init", "create_repo", "upload_folder"]
    adapters = [f"{m}/{f}" for m in ("invariant", "domain_0", "domain_1")
                for f in ("adapter_config.json", "adapter_model.safetensors")]
    code = ["aggregation_iclm.py", "configuration_iclm.py", "lora_iclm.py", "modeling_iclm.py",
            "mutual_information_iclm.py", "router_iclm.py", "saving_iclm.py"]
    tokenizer_files = {f for f in files if f.startswith(("tokenizer", "special_tokens"))}
    assert set(files) - tokenizer_files == set(adapters + code + [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "training_args.json"])
    card = open(os.path.join(folder, "README.md")).read()
    assert "Independent Causal Language Model" in card and "model-index" in card and "trust_remote_code" in card
    assert "words a" in card  # what each routed domain captured
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_push_without_network_fails_clearly_after_saving_everything(tmp_path):
    trainer, model = _setup(tmp_path, max_steps=1)
    trainer.train()
    with pytest.raises(ConnectionError, match="saved locally in .*hub"):
        trainer.push_to_hub(repo_id="user/iclm-offline", token="hf_fake")
    folder = tmp_path / "out" / "hub"
    assert (folder / "model.safetensors").exists() and (folder / "README.md").exists()
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]


def test_model_push_to_hub_uses_the_iclm_card(tmp_path, hub):
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    url = model.push_to_hub("user/plain", local_dir=str(tmp_path / "staged"))
    assert url == "https://huggingface.co/user/plain/commit/0"
    repo, folder, card = (uploads(hub)[0][key] for key in ("repo", "folder", "card"))
    assert repo == "user/plain" and folder == str(tmp_path / "staged")
    assert "Independent Causal Language Model" in card and "recipe was not recorded" in card
    assert (tmp_path / "staged" / "domain_1" / "adapter_config.json").exists()


def test_centroids_in_use_are_never_restarted(tmp_path, caplog):
    trainer, model = _setup(tmp_path, dead_centroid_steps=1, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="trainer_iclm"):
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["route_share/domain_0"] > 0 and entry["route_share/domain_1"] > 0 for entry in logs)
    assert not [r for r in caplog.records if "Restarted dead router centroid" in r.message]


def test_token_routes_count_as_use(tmp_path):
    trainer, model = _setup(tmp_path, num_domains=3)
    outputs = model(input_ids=torch.tensor([[4, 5, 6]]))
    outputs.routes = torch.tensor([0])
    outputs.token_routes = torch.tensor([[0, 2, 0]])
    trainer.state.global_step = 6
    trainer._record(outputs, None)
    assert trainer._last_used == [7, 0, 7]


def test_data_problems_are_caught_before_training(tmp_path):
    tokenizer = word_tokenizer(vocabulary())
    collator = AnswerOnlyCollator(tokenizer, max_length=16, padding_side="right")
    args = IclmTrainingArguments(output_dir=str(tmp_path), report_to="none", use_oracle_routing=True)
    rows = two_domain_rows(8)
    no_domains = Dataset.from_list([{k: v for k, v in row.items() if k != "domain_id"} for row in rows])
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    with pytest.raises(ValueError, match="use_oracle_routing=True .* no `domain_ids`"):
        IclmTrainer(model=model, args=args, train_dataset=no_domains, data_collator=collator)
    # One over-long row first: the collator skips it (and says so); the data set is still usable.
    long_first = Dataset.from_list([{**rows[0], "prompt": "a1 " * 40}] + rows[1:])
    IclmTrainer(model=model, args=args, train_dataset=long_first, data_collator=collator)


def test_captured_domains_name_every_distribution(tmp_path):
    trainer, _ = _setup(tmp_path, max_steps=2, use_oracle_routing=True, router_init="random")
    trainer.domain_names = ["words a"]  # fewer names than the data's domains
    trainer.train()
    assert trainer.captured_domains() == {"domain_0": {"words a": 1.0}, "domain_1": {"distribution 1": 1.0}}


def test_push_during_training_uploads_complete_folders_to_the_trainers_repo(tmp_path, hub):
    trainer, _ = _setup(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, push_to_hub=True)
    trainer.training_data = "two toy domains"
    trainer.train()
    trainer.save_model()  # the final push, once
    assert [(call["repo"], call["message"]) for call in uploads(hub)] == [
        ("me/out", "Training in progress, step 1"), ("me/out", "Training in progress, step 2"), ("me/out", "Model save")]
    for files, card in ((call["files"], call["card"]) for call in uploads(hub)):
        assert {"README.md", "modeling_iclm.py", "domain_1/adapter_model.safetensors", "training_args.json"} <= files
        assert "training_args.bin" not in files
        assert "Data: two toy domains" in card
    final_card = uploads(hub)[-1]["card"]
    assert "2 steps (0.50 epochs)" in final_card  # what was trained, not num_train_epochs
    assert "llama base, stored in full in this repository" in final_card and "huggingface.co/llama" not in final_card
    assert 'AutoTokenizer.from_pretrained("me/out")' in final_card


def test_single_module_ce_is_counted_once(tmp_path):
    """Without the invariant module the model's CE is also its domain_loss: the total must not add it twice."""
    tokenizer = word_tokenizer(vocabulary())
    collator = AnswerOnlyCollator(tokenizer, max_length=64, padding_side="right")
    rows = two_domain_rows(8)
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, use_invariant_module=False).eval()
    args = IclmTrainingArguments(output_dir=str(tmp_path), report_to="none", router_init="random")
    trainer = IclmTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    loss, outputs = trainer.compute_loss(model, collator(rows), return_outputs=True)
    assert outputs.domain_loss is outputs.lm_loss
    torch.testing.assert_close(loss, outputs.lm_loss + 0.1 * outputs.commitment_loss)
    torch.testing.assert_close(loss, outputs.loss)
