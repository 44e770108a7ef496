"""Continual learning beyond the paper: grow an ICLM by one domain module for a new distribution (``iclm continual``).

Per seed, on one base (the embedded default, or ``--base-model``):

* **phase 1** trains an ICLM (one domain module per old distribution, k-means codebook) and a single PEFT LoRA on
  the *old* distributions (three of ACRE/RAVEN × text/symbolic), with the same steps, batch and learning rate;
* **phase 2** trains each compared system further on the *new* (fourth) distribution only, for the same steps:

  - ``iclm_added``: :meth:`IclmForCausalLM.add_domain_module` (fresh adapter, centroid at the new training
    prompts' router embeddings); the old domain adapters, the router projection, the old centroids, the invariant
    module and the aggregation map frozen: only the new adapter and its centroid learn;
  - ``iclm_added_anchored``: the same, but the invariant module trains, held toward its phase-1 weights by
    :meth:`IclmForCausalLM.anchor_invariant` (``anchor_weight``);
  - ``iclm_unfrozen``: the phase-1 ICLM trained further as it is: no new module, nothing frozen (the new prompts
    go to whichever old module the router picks);
  - ``single_lora``: the phase-1 LoRA fine-tuned further.

  Phase 2 keeps the phase-1 codebook (``router_init="random"``: the Trainer's k-means would overwrite it) and turns
  dead-centroid restarts off (``dead_centroid_steps=0``): the old centroids get no input during phase 2, and a
  restart would move them, frozen or not.

Every model is evaluated (greedy exact match, :func:`iclm.experiment.evaluation.evaluate_system`) on the
in-distribution test split of all four distributions after phase 1 (*before*) and after phase 2 (*after*).
Forgetting = before − after on an old distribution; *routing retention* = share of the old distributions' test
prompts that the router sends to the same domain module after phase 2 as after phase 1. Means and 95% Student-t
intervals are over seeds; verdicts (:func:`continual_verdicts`) are computed from the per-seed values.

Outputs in ``--out``: ``results.json`` (per-seed values, intervals, verdicts, versions, times), ``results.md``,
``figures/before_after.png``, ``runs/seed_<s>.json`` (a finished seed is not redone when the command is run again
with the same settings) and the trained models in ``models/seed_<s>/<system>/`` (``iclm_added`` is a grown
4-module ICLM: ``iclm interventions --model .../iclm_added`` analyses it).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from iclm.analysis.claims import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

SYSTEMS = ("single_lora", "iclm_unfrozen", "iclm_added", "iclm_added_anchored")
ICLM_SYSTEMS = ("iclm_unfrozen", "iclm_added", "iclm_added_anchored")
ADDED = ("iclm_added", "iclm_added_anchored")
PHASE1 = {"single_lora": "lora_phase1", "iclm_unfrozen": "iclm_phase1", "iclm_added": "iclm_phase1",
          "iclm_added_anchored": "iclm_phase1"}
DISTRIBUTIONS = ("acre/text", "acre/symbolic", "raven/text", "raven/symbolic")
TEST_SPLIT = {"acre": "iid", "raven": "center_single"}  # the in-distribution test split of each task
SYSTEM_TEXT = {
    "single_lora": "single LoRA, fine-tuned further on the new distribution",
    "iclm_unfrozen": "ICLM without freezing: trained further as it is (no new module)",
    "iclm_added": "ICLM, domain module added; old domain modules, router, invariant module and aggregation frozen",
    "iclm_added_anchored": "ICLM, domain module added; old domain modules, router and aggregation frozen, invariant "
                           "module trained with an L2 anchor to its phase-1 weights",
}

# Verdict rules (see continual_verdicts).
FORGET_MARGIN = 0.02  # 2 accuracy points: a smaller change is "within noise", a smaller reduction no reduction
RETENTION_MIN = 0.90  # share of old prompts that must keep their module
NLL_MARGIN = 0.01  # nats per answer token: a smaller change of the gold answers' log-loss is no change
CLAIM_TEXT = {
    "iclm_forgets_less_than_lora": "ICLM with an added domain module forgets the old distributions less than the "
                                   "single LoRA fine-tuned further.",
    "iclm_keeps_old_accuracy": "ICLM with an added domain module leaves the old distributions' accuracy unchanged "
                               "(within ±2 points).",
    "router_keeps_old_routes": "The router keeps sending the old distributions to their old modules (≥ 90% of old "
                               "test prompts keep their module).",
    "freezing_prevents_forgetting": "Freezing (module added) forgets less than training the ICLM further without "
                                    "freezing.",
    "iclm_loss_forgets_less_than_lora": "ICLM with an added domain module loses less of the old distributions' "
                                        "gold-answer likelihood than the single LoRA (log-loss increase).",
    "iclm_changes_fewer_old_answers": "ICLM with an added domain module changes fewer of the old distributions' greedy "
                                      "answers than the single LoRA (interference, whether or not the answers were "
                                      "right).",
    "freezing_changes_fewer_old_answers": "Freezing (module added) changes fewer of the old distributions' greedy "
                                          "answers than training the ICLM further without freezing.",
    "added_module_learns_new": "The added module learns the new distribution (accuracy gain over the phase-1 ICLM).",
    "added_module_lowers_new_loss": "The added module lowers the new distribution's gold-answer log-loss.",
    "anchored_keeps_old_accuracy": "ICLM with an added module and an anchored (not frozen) invariant module leaves "
                                   "the old distributions' accuracy unchanged (within ±2 points).",
}


@dataclass(frozen=True)
class ContinualPreset:
    name: str
    base_preset: str  # the embedded default base's preset, when no --base-model is given
    train_per_distribution: int  # training rows per distribution (old ones in phase 1, the new one in phase 2)
    test_per_split: int  # test rows per distribution (its in-distribution test split)
    phase1_steps: int
    phase2_steps: int
    batch_size: int
    learning_rate: float
    max_length: int  # training rows (prompt cut from the left beyond this)
    seeds: int
    old: tuple = ("acre/text", "acre/symbolic", "raven/text")
    new: str = "raven/symbolic"
    systems: tuple = SYSTEMS
    anchor_weight: float = 1.0  # iclm_added_anchored: weight of Σ‖θ_inv − θ_inv,phase1‖²
    acre_train_generated: int = 0  # ACRE training rows from the generator (train_generated, 4 rows per problem)
    eval_batch_size: int = 32
    max_new_tokens: int = 3
    eval_max_length: int = 1536
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05

    def to_dict(self) -> dict:
        data = asdict(self)
        data["old"], data["systems"] = list(self.old), list(self.systems)
        return data


PRESETS = {
    # The tests run it end to end (≤ 2 min with the smoke base); its numbers mean nothing.
    "smoke": ContinualPreset(name="smoke", base_preset="smoke", train_per_distribution=16, test_per_split=6,
                             phase1_steps=3, phase2_steps=3, batch_size=4, learning_rate=2e-3, max_length=320,
                             seeds=2, acre_train_generated=8, eval_batch_size=12),
    # The committed results: 3 seeds, 15.7 CPU-minutes (23.5 min wall on 2 CPU cores shared with other jobs, load ~4.5),
    # one thread; the default base built once beforehand (10 min here, cached; shared with `iclm experiment`).
    "default": ContinualPreset(name="default", base_preset="default", train_per_distribution=400, test_per_split=60,
                               phase1_steps=100, phase2_steps=80, batch_size=8, learning_rate=1e-3, max_length=768,
                               seeds=3, acre_train_generated=400),
}


def get_preset(name: str, **overrides) -> ContinualPreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown continual preset {name!r}; expected one of {', '.join(PRESETS)}.")
    preset = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    check_preset(preset)
    return preset


def check_preset(preset: ContinualPreset) -> None:
    unknown = [d for d in (*preset.old, preset.new) if d not in DISTRIBUTIONS]
    if unknown:
        raise ValueError(f"Unknown distribution(s) {unknown}; expected names from {', '.join(DISTRIBUTIONS)}.")
    if preset.new in preset.old:
        raise ValueError(f"The new distribution {preset.new!r} is one of the old ones {list(preset.old)}.")
    if len(set(preset.old)) != len(preset.old) or len(preset.old) < 2:
        raise ValueError(f"Give at least two distinct old distributions, got {list(preset.old)}.")
    bad = [s for s in preset.systems if s not in SYSTEMS]
    if bad or not preset.systems:
        raise ValueError(f"Unknown system(s) {bad}; expected names from {', '.join(SYSTEMS)}.")
    for name in ("train_per_distribution", "test_per_split", "phase1_steps", "phase2_steps", "batch_size", "seeds",
                 "max_length"):
        if getattr(preset, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(preset, name)}.")
    if not (preset.anchor_weight >= 0 and math.isfinite(preset.anchor_weight)):
        raise ValueError(f"anchor_weight must be a finite number >= 0, got {preset.anchor_weight}.")


# ------------------------------------------------------------------------------------------------------ data
def split_of(distribution: str) -> str:
    from iclm.tasks import split_name

    task, rendering = distribution.split("/")
    return split_name(task, rendering, TEST_SPLIT[task])


def _local_ids(dataset, order: list[str]):
    """Domain ids local to this study: the position of the row's distribution in ``order``."""
    return dataset.map(lambda row: {"domain_id": order.index(row["distribution"]),
                                    "length": len(row["prompt"]) + len(row["answer"])})


def load_data(preset: ContinualPreset):
    """Phase-1 rows (old distributions, mixed), phase-2 rows (the new one), test rows per distribution.

    Training rows whose problem context is a test problem's are dropped (counted in ``leakage``)."""
    import datasets

    from iclm.tasks import load_task

    from .runner import test_contexts_of, without_test_contexts

    order = [*preset.old, preset.new]
    tests = {}
    for distribution in DISTRIBUTIONS:
        task, rendering = distribution.split("/")
        tests[distribution] = load_task(task, rendering, TEST_SPLIT[task], limit=preset.test_per_split,
                                        seed=0).to_list()
    contexts = test_contexts_of(tests)
    parts, dropped = {}, {}
    for distribution in order:
        task, rendering = distribution.split("/")
        if task == "acre" and preset.acre_train_generated:
            part = load_task("acre", rendering, "train_generated", acre_generated=preset.acre_train_generated,
                             limit=preset.train_per_distribution, seed=0)
        else:
            part = load_task(task, rendering, "train", limit=preset.train_per_distribution, seed=0)
        part, count = without_test_contexts(part, contexts)
        if count:
            dropped[distribution] = count
        parts[distribution] = _local_ids(part, order)
    phase1 = datasets.concatenate_datasets([parts[d] for d in preset.old])
    phase2 = parts[preset.new]
    leakage = {"train_rows_sharing_a_test_context_dropped": dropped}
    return phase1, phase2, tests, leakage


# --------------------------------------------------------------------------------------------------- training
def _training_arguments(preset: ContinualPreset, seed: int, steps: int, output_dir: str, iclm: bool, **extra):
    """The experiment's training arguments (``systems._common_arguments``) for ``steps`` steps of this preset, with
    what the study sets otherwise: a linear schedule without warm-up, rows grouped by length, logs
    every steps/5, CPU-side data loading, float32."""
    from types import SimpleNamespace

    from trainer_iclm import IclmTrainingArguments
    from transformers import TrainingArguments

    from .systems import _common_arguments

    schedule = SimpleNamespace(batch_size=preset.batch_size, max_steps=steps, learning_rate=preset.learning_rate,
                               lr_scheduler_type="linear", warmup_ratio=0.0, group_by_length=True)
    common = _common_arguments(schedule, seed, output_dir)
    common.update(warmup_steps=0, logging_steps=max(steps // 5, 1), disable_tqdm=True, bf16=False,
                  dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(),
                  train_sampling_strategy="group_by_length", length_column_name="length")
    return IclmTrainingArguments(**common, **extra) if iclm else TrainingArguments(**common)


def _collator(tokenizer, preset):
    from iclm.tasks import AnswerOnlyCollator

    return AnswerOnlyCollator(tokenizer, max_length=preset.max_length, padding_side="right")


def train_phase1(kind: str, base_path: str, tokenizer, rows, preset, seed: int, model_dir: str, names: list[str]):
    """``lora_phase1`` or ``iclm_phase1`` trained on the old distributions, saved in ``model_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    from lora_iclm import default_target_modules
    from modeling_iclm import IclmForCausalLM
    from trainer_iclm import IclmTrainer

    from .systems import load_base

    torch.manual_seed(seed)
    base = load_base(base_path, {})
    scratch = os.path.join(model_dir, "_trainer")
    if kind == "lora_phase1":
        config = LoraConfig(r=preset.lora_r, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
                            target_modules=default_target_modules(base), task_type="CAUSAL_LM")
        model = get_peft_model(base, config)
        trainer = Trainer(model=model, args=_training_arguments(preset, seed, preset.phase1_steps, scratch, False),
                          train_dataset=rows, data_collator=_collator(tokenizer, preset))
    else:
        model = IclmForCausalLM.from_base(base, num_domains=len(names), lora_r=preset.lora_r,
                                          lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout)
        args = _training_arguments(preset, seed, preset.phase1_steps, scratch, True, router_init="kmeans",
                                   router_init_samples=min(256, len(rows)))
        trainer = IclmTrainer(model=model, args=args, train_dataset=rows, data_collator=_collator(tokenizer, preset),
                              domain_names=names)
    trainer.train()
    model.save_pretrained(model_dir)
    return model.eval(), trainer.state.log_history


def load_model(kind: str, base_path: str, model_dir: str, trainable: bool = False):
    from peft import PeftModel

    from modeling_iclm import IclmForCausalLM

    from .systems import load_base

    if kind.startswith("lora") or kind == "single_lora":
        return PeftModel.from_pretrained(load_base(base_path, {}), model_dir, is_trainable=trainable)
    return IclmForCausalLM.from_pretrained(model_dir, base_model_name_or_path=base_path)


@torch.no_grad()
def router_embeddings(model, tokenizer, rows, batch_size: int, max_length: int) -> torch.Tensor:
    """The router's pooled embeddings of the rows' prompts (what ``add_domain_module`` takes)."""
    collator = _collator_for_routes(tokenizer, max_length)
    was_training = model.training
    model.eval()
    out = [model.route(**_route_inputs(collator(rows[i : i + batch_size]))).embeddings.float()
           for i in range(0, len(rows), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _collator_for_routes(tokenizer, max_length):
    from iclm.tasks import AnswerOnlyCollator

    return AnswerOnlyCollator(tokenizer, max_length=max_length, return_prompt_only=True)


def _route_inputs(batch) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def phase2_arguments(preset: ContinualPreset, seed: int, output_dir: str):
    """IclmTrainer arguments of phase 2: the phase-1 codebook (grown or not) is kept (``router_init="random"``: k-means
    would overwrite it) and dead centroids are never restarted (``dead_centroid_steps=0``: the old distributions'
    centroids get no input while the new distribution trains, and a restart writes into the codebook directly,
    past the gradient hook that keeps frozen centroids). One distribution: a single module taking every input is
    expected, so no collapse warning (share > 1)."""
    return _training_arguments(preset, seed, preset.phase2_steps, output_dir, True, router_init="random",
                               dead_centroid_steps=0, router_collapse_share=1.01)


def train_phase2(system: str, base_path: str, tokenizer, rows, preset, seed: int, phase1_dir: str, model_dir: str,
                 names: list[str]):
    """``system`` trained further on the new distribution's ``rows``, from the phase-1 model saved in ``phase1_dir``.
    Returns the model (eval mode), the log history and facts about the phase (trainable parameters, new module)."""
    from transformers import Trainer

    from trainer_iclm import IclmTrainer

    torch.manual_seed(seed)
    scratch = os.path.join(model_dir, "_trainer")
    collator = _collator(tokenizer, preset)
    facts = {}
    if system == "single_lora":
        model = load_model("single_lora", base_path, phase1_dir, trainable=True)
        trainer = Trainer(model=model, args=_training_arguments(preset, seed, preset.phase2_steps, scratch, False),
                          train_dataset=rows, data_collator=collator)
    else:
        model = load_model("iclm", base_path, phase1_dir)
        old_domains = [f"domain_{k}" for k in range(model.config.num_domains)]
        if system in ADDED:
            embeddings = router_embeddings(model, tokenizer, rows.to_list()[:256], preset.eval_batch_size,
                                           preset.max_length)
            facts["new_module"] = model.add_domain_module(embeddings)
            frozen = old_domains + (["invariant"] if system == "iclm_added" else [])
            model.freeze_modules(frozen)
            if model.model.aggregation is not None:
                model.model.aggregation.requires_grad_(False)
            if system == "iclm_added_anchored":
                model.anchor_invariant(preset.anchor_weight)
            facts["frozen"] = frozen + ["router projection", "old centroids", "aggregation"]
        model.train()
        args = phase2_arguments(preset, seed, scratch)
        trainer = IclmTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                              domain_names=names + [preset.new])
    facts["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer.train()
    if system in ("iclm_added_anchored",):
        model.anchor_invariant(0.0)
    model.save_pretrained(model_dir)
    return model.eval(), trainer.state.log_history, facts


# ------------------------------------------------------------------------------------------------- one seed
@torch.no_grad()
def answer_nll(model, tokenizer, rows, batch_size: int, max_length: int) -> list[float]:
    """Each row's mean negative log-likelihood (nats per token) of its gold answer after its prompt: a continuous
    measure of what the model knows, which moves even where greedy accuracy sits at the floor."""
    import torch.nn.functional as F

    from iclm.tasks import AnswerOnlyCollator

    collator = AnswerOnlyCollator(tokenizer, max_length=max_length, padding_side="right", add_eos=False,
                                  min_prompt_tokens=0, on_too_long="error")
    device = next(model.parameters()).device
    values = []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        labels = batch["labels"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       labels=labels).logits.float()
        targets = labels[:, 1:]
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp_min(0), reduction="none")
        mask = (targets != -100).float()
        values += ((losses * mask).sum(1) / mask.sum(1).clamp_min(1)).tolist()
    return values


def _evaluate(model, tokenizer, tests: dict, preset, name: str) -> dict:
    """Greedy exact match (the experiment's generation and metric), the normalised answers, and the gold answers'
    log-loss, per distribution."""
    from iclm.metrics.normalization import answer_format, normalize_answer

    from .evaluation import answer_token_budget, generate_answers, split_accuracy

    result = {"accuracy": {}, "answers": {}, "nll": {}}
    for distribution, rows in tests.items():
        predictions = generate_answers(model, tokenizer, rows, batch_size=preset.eval_batch_size,
                                       max_new_tokens=answer_token_budget(tokenizer, rows, preset.max_new_tokens),
                                       max_length=preset.eval_max_length, desc=f"{name} {distribution}")
        result["accuracy"][distribution] = split_accuracy(rows, predictions)["accuracy"]
        result["answers"][distribution] = [normalize_answer(p, answer_format(row["answer"]))
                                           for p, row in zip(predictions, rows)]
        result["nll"][distribution] = answer_nll(model, tokenizer, rows, preset.eval_batch_size,
                                                 preset.eval_max_length)
    return result


def _routing(model, tokenizer, tests: dict, preset) -> dict:
    from .interventions import prompt_routes

    return {d: prompt_routes(model, tokenizer, rows, batch_size=preset.eval_batch_size,
                             max_length=preset.eval_max_length)
            for d, rows in tests.items()}


def run_seed(seed: int, preset: ContinualPreset, base_path: str, tokenizer, phase1_rows, phase2_rows, tests: dict,
             out: Path, log=print) -> dict:
    """Phase 1, the before evaluations, phase 2 of every system and the after evaluations, for one seed."""
    names = list(preset.old)
    models = out / "models" / f"seed_{seed}"
    record = {"seed": seed, "before": {}, "after": {}, "routes_before": {}, "routes_after": {}, "seconds": {},
              "train_log": {}, "phase2": {}, "answers_before": {}, "answers_after": {}, "nll_before": {},
              "nll_after": {}}
    needed = sorted({PHASE1[s] for s in preset.systems})
    for kind in needed:
        tick = time.time()
        model, history = train_phase1(kind, base_path, tokenizer, phase1_rows, preset, seed, str(models / kind), names)
        record["train_log"][kind] = history
        scores = _evaluate(model, tokenizer, tests, preset, f"seed {seed} {kind}")
        record["before"][kind], record["answers_before"][kind], record["nll_before"][kind] = (
            scores["accuracy"], scores["answers"], scores["nll"])
        if kind == "iclm_phase1":
            record["routes_before"][kind] = _routing(model, tokenizer, tests, preset)
        record["seconds"][kind] = round(time.time() - tick, 1)
        log(f"seed {seed} {kind}: before {_short(record['before'][kind])} ({record['seconds'][kind]} s)")
        del model
    for system in preset.systems:
        tick = time.time()
        model, history, facts = train_phase2(system, base_path, tokenizer, phase2_rows, preset, seed,
                                             str(models / PHASE1[system]), str(models / system), names)
        record["train_log"][system] = history
        record["phase2"][system] = facts
        scores = _evaluate(model, tokenizer, tests, preset, f"seed {seed} {system}")
        record["after"][system], record["answers_after"][system], record["nll_after"][system] = (
            scores["accuracy"], scores["answers"], scores["nll"])
        if system in ICLM_SYSTEMS:
            record["routes_after"][system] = _routing(model, tokenizer, tests, preset)
        record["seconds"][system] = round(time.time() - tick, 1)
        log(f"seed {seed} {system}: after {_short(record['after'][system])} ({record['seconds'][system]} s)")
        del model
    return record


def _short(scores: dict) -> str:
    return ", ".join(f"{d} {v:.2f}" for d, v in scores.items())


# ------------------------------------------------------------------------------------------------ statistics
def seed_measures(record: dict, preset: ContinualPreset) -> dict:
    """Per-seed quantities of one run record: before/after accuracy per system and distribution, forgetting per
    old distribution and its mean, the new distribution's gain, routing retention and the new module's share."""
    n_old = len(preset.old)
    out = {"before": {}, "after": {}, "forgetting": {}, "mean_forgetting": {}, "new_gain": {}, "retention": {},
           "retention_per_distribution": {}, "new_to_new_module": {}, "new_routes": {}}
    routes = record.get("routes_before", {}).get("iclm_phase1")
    if routes:  # how cleanly the phase-1 router separates the distributions (module labels differ between seeds)
        out["phase1_majority_share"] = {d: max(r.count(k) for k in set(r)) / len(r) for d, r in routes.items()}
    for system in preset.systems:
        if system not in record["after"]:
            continue
        before, after = record["before"][PHASE1[system]], record["after"][system]
        out["before"][system], out["after"][system] = before, after
        forgetting = {d: before[d] - after[d] for d in preset.old}
        out["forgetting"][system] = forgetting
        out["mean_forgetting"][system] = sum(forgetting.values()) / n_old
        out["new_gain"][system] = after[preset.new] - before[preset.new]
        if system in record.get("nll_after", {}):
            nll_before, nll_after = record["nll_before"][PHASE1[system]], record["nll_after"][system]
            mean = lambda values: sum(values) / len(values)  # noqa: E731
            increase = {d: mean(nll_after[d]) - mean(nll_before[d]) for d in preset.old}
            out.setdefault("nll_before", {})[system] = {d: mean(v) for d, v in nll_before.items()}
            out.setdefault("nll_after", {})[system] = {d: mean(v) for d, v in nll_after.items()}
            out.setdefault("nll_increase", {})[system] = increase
            out.setdefault("mean_nll_increase", {})[system] = sum(increase.values()) / n_old
            out.setdefault("new_nll_gain", {})[system] = mean(nll_before[preset.new]) - mean(nll_after[preset.new])
            answers_before, answers_after = record["answers_before"][PHASE1[system]], record["answers_after"][system]
            changed = {d: mean([a != b for a, b in zip(answers_before[d], answers_after[d])]) for d in preset.old}
            out.setdefault("answers_changed", {})[system] = changed
            out.setdefault("mean_answers_changed", {})[system] = sum(changed.values()) / n_old
        if system in ICLM_SYSTEMS and system in record["routes_after"]:
            old_routes = record["routes_before"]["iclm_phase1"]
            new_routes = record["routes_after"][system]
            per = {d: sum(a == b for a, b in zip(old_routes[d], new_routes[d])) / len(old_routes[d]) for d in preset.old}
            out["retention_per_distribution"][system] = per
            total = sum(len(old_routes[d]) for d in preset.old)
            out["retention"][system] = sum(per[d] * len(old_routes[d]) for d in preset.old) / total
            routes = new_routes[preset.new]
            out["new_routes"][system] = {str(k): routes.count(k) / len(routes) for k in sorted(set(routes))}
            if system in ADDED:
                out["new_to_new_module"][system] = routes.count(n_old) / len(routes)
    return out


def _ci(values):
    from iclm.analysis import mean_ci95

    return mean_ci95(values)


def verdict_greater(values, margin: float = FORGET_MARGIN) -> tuple[str, dict | None]:
    """Paired differences that should be > 0: *supported* when the 95% interval of their mean lies above 0,
    *not supported* when it lies below ``margin`` (the data exclude a difference that large), else (or with fewer
    than 2 seeds) *inconclusive*."""
    values = list(values)
    if len(values) < 2:
        return INCONCLUSIVE, _ci(values) if values else None
    ci = _ci(values)
    if ci["ci95_low"] > 0:
        return SUPPORTED, ci
    if ci["ci95_high"] < margin:
        return NOT_SUPPORTED, ci
    return INCONCLUSIVE, ci


def verdict_within(values, margin: float = FORGET_MARGIN) -> tuple[str, dict | None]:
    """Changes that should be ≈ 0: *supported* when the 95% interval lies inside ±``margin``, *not supported* when it
    lies entirely outside it (a change of at least ``margin`` either way), else (or < 2 seeds) *inconclusive*."""
    values = list(values)
    if len(values) < 2:
        return INCONCLUSIVE, _ci(values) if values else None
    ci = _ci(values)
    if -margin <= ci["ci95_low"] and ci["ci95_high"] <= margin:
        return SUPPORTED, ci
    if ci["ci95_low"] > margin or ci["ci95_high"] < -margin:
        return NOT_SUPPORTED, ci
    return INCONCLUSIVE, ci


def verdict_at_least(values, threshold: float = RETENTION_MIN) -> tuple[str, dict | None]:
    """Shares that should be ≥ ``threshold``: *supported* when the interval's low end is, *not supported* when its
    high end is below it, else (or < 2 seeds) *inconclusive*."""
    values = list(values)
    if len(values) < 2:
        return INCONCLUSIVE, _ci(values) if values else None
    ci = _ci(values)
    if ci["ci95_low"] >= threshold:
        return SUPPORTED, ci
    if ci["ci95_high"] < threshold:
        return NOT_SUPPORTED, ci
    return INCONCLUSIVE, ci


def continual_verdicts(per_seed: dict) -> dict:
    """Verdicts from ``{seed: seed_measures(...)}``. Every claim's per-seed values are paired within a seed (same base,
    data, order and test rows). Rules:

    * ``iclm_forgets_less_than_lora``: d = mean forgetting(single_lora) − mean forgetting(iclm_added)
      (:func:`verdict_greater`, margin 2 points);
    * ``iclm_loss_forgets_less_than_lora``: the same with the old distributions' gold-answer log-loss increase
      (after − before, nats per token; margin 0.01): forgetting where accuracy sits at the floor;
    * ``iclm_changes_fewer_old_answers``: share of old test prompts whose greedy answer changed, single_lora −
      iclm_added (greater, 2 points);
    * ``iclm_keeps_old_accuracy``: mean forgetting(iclm_added) (:func:`verdict_within`, ±2 points);
    * ``router_keeps_old_routes``: routing retention of iclm_added (:func:`verdict_at_least`, 0.90);
    * ``freezing_prevents_forgetting``: mean forgetting(iclm_unfrozen) − mean forgetting(iclm_added) (greater);
    * ``freezing_changes_fewer_old_answers``: the same, iclm_unfrozen − iclm_added;
    * ``added_module_learns_new``: new-distribution accuracy of iclm_added − that of the phase-1 ICLM (greater);
    * ``added_module_lowers_new_loss``: the new distribution's log-loss, phase-1 ICLM − iclm_added (greater, 0.01);
    * ``anchored_keeps_old_accuracy``: mean forgetting(iclm_added_anchored) (within).

    A claim whose systems were not run is *inconclusive* with ``evidence`` saying so."""
    seeds = sorted(per_seed)

    def values(key, system):
        return [per_seed[s][key][system] for s in seeds if system in per_seed[s].get(key, {})]

    def paired(key, first, second):
        both = [s for s in seeds if first in per_seed[s].get(key, {}) and second in per_seed[s].get(key, {})]
        return [per_seed[s][key][first] - per_seed[s][key][second] for s in both]

    def nll(rule):
        return lambda data: rule(data, NLL_MARGIN)

    rules = {
        "iclm_forgets_less_than_lora": (verdict_greater, lambda: paired("mean_forgetting", "single_lora", "iclm_added"),
                                        ("single_lora", "iclm_added")),
        "iclm_keeps_old_accuracy": (verdict_within, lambda: values("mean_forgetting", "iclm_added"), ("iclm_added",)),
        "router_keeps_old_routes": (verdict_at_least, lambda: values("retention", "iclm_added"), ("iclm_added",)),
        "freezing_prevents_forgetting": (verdict_greater,
                                         lambda: paired("mean_forgetting", "iclm_unfrozen", "iclm_added"),
                                         ("iclm_unfrozen", "iclm_added")),
        "iclm_loss_forgets_less_than_lora": (nll(verdict_greater),
                                             lambda: paired("mean_nll_increase", "single_lora", "iclm_added"),
                                             ("single_lora", "iclm_added")),
        "iclm_changes_fewer_old_answers": (verdict_greater,
                                           lambda: paired("mean_answers_changed", "single_lora", "iclm_added"),
                                           ("single_lora", "iclm_added")),
        "freezing_changes_fewer_old_answers": (verdict_greater,
                                               lambda: paired("mean_answers_changed", "iclm_unfrozen", "iclm_added"),
                                               ("iclm_unfrozen", "iclm_added")),
        "added_module_learns_new": (verdict_greater, lambda: values("new_gain", "iclm_added"), ("iclm_added",)),
        "added_module_lowers_new_loss": (nll(verdict_greater), lambda: values("new_nll_gain", "iclm_added"),
                                         ("iclm_added",)),
        "anchored_keeps_old_accuracy": (verdict_within, lambda: values("mean_forgetting", "iclm_added_anchored"),
                                        ("iclm_added_anchored",)),
    }
    verdicts = {}
    for claim, (rule, measure, systems) in rules.items():
        data = measure()
        if not data:
            verdicts[claim] = {"verdict": INCONCLUSIVE, "claim": CLAIM_TEXT[claim],
                               "evidence": f"not run: needs {', '.join(systems)}"}
            continue
        verdict, ci = rule(data)
        verdicts[claim] = {"verdict": verdict, "claim": CLAIM_TEXT[claim], "evidence": ci}
    return verdicts


def verdict_line(verdicts: dict) -> str:
    loss = verdicts["iclm_loss_forgets_less_than_lora"]["verdict"]
    main = verdicts["iclm_forgets_less_than_lora"]["verdict"]
    changed = verdicts["iclm_changes_fewer_old_answers"]["verdict"]
    return (f"ICLM (domain module added) forgets less than the single LoRA: accuracy {main.upper()}; answer log-loss "
            f"{loss.upper()}; old answers changed {changed.upper()}")


def summarise_seeds(per_seed: dict, preset: ContinualPreset) -> dict:
    """Means and 95% intervals over seeds of every per-seed quantity."""
    seeds = sorted(per_seed)
    result = {"accuracy": {}, "forgetting": {}, "mean_forgetting": {}, "new_gain": {}, "retention": {},
              "retention_per_distribution": {}, "new_to_new_module": {}}
    if seeds and all("phase1_majority_share" in per_seed[s] for s in seeds):
        result["phase1_majority_share"] = {d: _ci([per_seed[s]["phase1_majority_share"][d] for s in seeds])
                                           for d in DISTRIBUTIONS}
    for system in preset.systems:
        have = [s for s in seeds if system in per_seed[s]["after"]]
        if not have:
            continue
        result["accuracy"][system] = {
            d: {"before": _ci([per_seed[s]["before"][system][d] for s in have]),
                "after": _ci([per_seed[s]["after"][system][d] for s in have])} for d in DISTRIBUTIONS}
        result["forgetting"][system] = {d: _ci([per_seed[s]["forgetting"][system][d] for s in have]) for d in preset.old}
        result["mean_forgetting"][system] = _ci([per_seed[s]["mean_forgetting"][system] for s in have])
        result["new_gain"][system] = _ci([per_seed[s]["new_gain"][system] for s in have])
        if all(system in per_seed[s].get("mean_nll_increase", {}) for s in have):
            result.setdefault("nll", {})[system] = {
                d: {"before": _ci([per_seed[s]["nll_before"][system][d] for s in have]),
                    "after": _ci([per_seed[s]["nll_after"][system][d] for s in have])} for d in DISTRIBUTIONS}
            for key in ("mean_nll_increase", "new_nll_gain", "mean_answers_changed"):
                result.setdefault(key, {})[system] = _ci([per_seed[s][key][system] for s in have])
            result.setdefault("nll_increase", {})[system] = {
                d: _ci([per_seed[s]["nll_increase"][system][d] for s in have]) for d in preset.old}
        if all(system in per_seed[s]["retention"] for s in have) and system in ICLM_SYSTEMS:
            result["retention"][system] = _ci([per_seed[s]["retention"][system] for s in have])
            result["retention_per_distribution"][system] = {
                d: _ci([per_seed[s]["retention_per_distribution"][system][d] for s in have]) for d in preset.old}
        if all(system in per_seed[s]["new_to_new_module"] for s in have) and system in ADDED and have:
            result["new_to_new_module"][system] = _ci([per_seed[s]["new_to_new_module"][system] for s in have])
    return result


# ------------------------------------------------------------------------------------------------- outputs
def plot_before_after(summary: dict, preset: ContinualPreset, baselines: dict, path) -> Path:
    """Top row: one panel per distribution (bars: each system before and after phase 2, 95% CI error bars, chance
    and majority lines; the new distribution's panel says so) and a last panel of mean forgetting on the old
    distributions. Bottom row (when measured): the same for the gold answers' log-loss and its mean increase."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    systems = [s for s in preset.systems if s in summary["accuracy"]]
    order = [*preset.old, preset.new]
    rows = [("accuracy", "mean_forgetting", "exact-match accuracy", "forgetting (old, mean)\nbefore − after")]
    if summary.get("nll"):
        rows.append(("nll", "mean_nll_increase", "gold-answer log-loss (nats/token)",
                     "log-loss increase (old, mean)\nafter − before"))
    changed = bool(summary.get("mean_answers_changed"))
    columns = len(order) + 1 + changed
    figure = Figure(figsize=(3.2 * columns, 3.4 * len(rows) + 0.6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    colours = [figure_colour(i) for i in range(len(systems))]
    labels = [s.replace("_", "\n") for s in systems]

    def bar(ax, x, ci, colour, hatch=None, alpha=1.0, width=0.38):
        half = ci["half_width"]
        ax.bar(x, ci["mean"], width=width, color=colour, alpha=alpha, hatch=hatch, edgecolor="black", linewidth=0.4,
               yerr=None if math.isnan(half) else half, capsize=2, error_kw={"linewidth": 0.8})

    for axes, (key, change, ylabel, change_title) in zip(grid, rows):
        top = max([1.0] if key == "accuracy" else
                  [summary[key][s][d][w]["mean"] + (0 if math.isnan(summary[key][s][d][w]["half_width"])
                                                    else summary[key][s][d][w]["half_width"])
                   for s in systems for d in order for w in ("before", "after")])
        for ax, distribution in zip(axes, order):
            for i, system in enumerate(systems):
                cell = summary[key][system][distribution]
                bar(ax, i - 0.2, cell["before"], colours[i], hatch="//", alpha=0.45)
                bar(ax, i + 0.2, cell["after"], colours[i])
            base = baselines.get(distribution, {})
            if key == "nll" and base.get("chance"):  # a uniform guess over the choices (one-token answers)
                ax.axhline(math.log(1 / base["chance"]), color="grey", linestyle="--", linewidth=0.8)
            if key == "accuracy":
                if base.get("chance") is not None:
                    ax.axhline(base["chance"], color="grey", linestyle="--", linewidth=0.8)
                if base.get("majority") is not None:
                    ax.axhline(base["majority"], color="grey", linestyle=":", linewidth=0.8)
            ax.set_xticks(range(len(systems)), labels, fontsize=7)
            ax.set_ylim(0, top * 1.05)
            ax.set_title(f"{distribution}{' (NEW)' if distribution == preset.new else ' (old)'}", fontsize=9)
        axes[0].set_ylabel(ylabel, fontsize=8)
        ax = axes[len(order)]
        for i, system in enumerate(systems):
            bar(ax, i, summary[change][system], colours[i], width=0.7)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(systems)), labels, fontsize=7)
        ax.set_title(change_title, fontsize=9)
    if changed:
        ax = grid[0][-1]
        for i, system in enumerate(systems):
            bar(ax, i, summary["mean_answers_changed"][system], colours[i], width=0.7)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(len(systems)), labels, fontsize=7)
        ax.set_title("old answers changed\n(share of old test prompts)", fontsize=9)
        for ax in grid[1:, -1]:
            ax.set_visible(False)
    figure.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//", label="before (after phase 1)"),
                           Patch(facecolor="grey", edgecolor="black", label="after phase 2")],
                  loc="outside lower center", ncols=2, fontsize=8)
    figure.suptitle("Continual learning: before/after adding the new distribution (mean ± 95% CI over seeds; "
                    "dashed: chance (log-loss: uniform guess), dotted: majority)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    return path


def figure_colour(index: int):
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def _pct(ci: dict | None, digits: int = 1) -> str:
    if not ci:
        return "—"
    half = ci["half_width"]
    return f"{100 * ci['mean']:.{digits}f}" + ("" if math.isnan(half) else f" ± {100 * half:.{digits}f}")


def _num(ci: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not ci:
        return "—"
    half = ci["half_width"]
    return f"{ci['mean']:{'+' if signed else ''}.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def results_markdown(results: dict) -> str:
    preset = ContinualPreset(**{**results["preset"], "old": tuple(results["preset"]["old"]),
                                "systems": tuple(results["preset"]["systems"])})
    summary, verdicts = results["summary"], results["verdicts"]
    systems = [s for s in preset.systems if s in summary["accuracy"]]
    smoke = preset.name == "smoke"
    lines = ["# SMOKE TEST — not a result\n\nThe smoke preset only checks that every code path runs; its numbers and "
             "verdicts mean nothing.\n" if smoke else f"# Continual learning: a domain module added ({preset.name} "
             "preset)\n",
             f"Base: {results['base_model']}. Phase 1: {preset.phase1_steps} steps of batch {preset.batch_size} on "
             f"{', '.join(preset.old)} ({preset.train_per_distribution} rows each); phase 2: {preset.phase2_steps} "
             f"steps on **{preset.new}** only ({preset.train_per_distribution} rows); lr {preset.learning_rate:g}, "
             f"LoRA r = {preset.lora_r}; {results['seeds']} seed(s); {preset.test_per_split} test rows per "
             f"distribution (its in-distribution test split); training and evaluation "
             f"{sum(sum(seed.values()) for seed in results['seconds'].values()) / 60:.1f} min in all (sum over seeds "
             f"and systems; this invocation {results['wall_time_seconds'] / 60:.1f} min).",
             "",
             f"**Verdict: {results['verdict_line']}.**",
             "",
             "## Systems (phase 2)",
             ""]
    lines += [f"* `{s}`: {SYSTEM_TEXT[s]}" + (f" (weight {preset.anchor_weight:g})" if s == "iclm_added_anchored" else "")
              for s in systems]
    order = [*preset.old, preset.new]
    lines += ["", "## Accuracy (%) before (after phase 1) → after phase 2", "",
              "Mean ± 95% CI half-width over seeds (Student t).", "",
              "| system | " + " | ".join(f"{d}{' (new)' if d == preset.new else ''}" for d in [*preset.old, preset.new])
              + " |", "|:---|" + "---:|" * (len(preset.old) + 1)]
    for system in systems:
        cells = [f"{_pct(summary['accuracy'][system][d]['before'])} → {_pct(summary['accuracy'][system][d]['after'])}"
                 for d in [*preset.old, preset.new]]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    baselines = results["baselines"]
    lines.append("| *chance / majority* | " + " | ".join(
        f"{100 * baselines[d]['chance']:.1f} / {100 * baselines[d]['majority']:.1f}" for d in [*preset.old, preset.new])
        + " |")
    lines += ["", "## Forgetting (points, before − after; > 0 = forgot) and the new distribution", "",
              "| system | " + " | ".join(preset.old) + " | mean over old | new-distribution gain | routing retention "
              "(old prompts, same module) | new prompts → new module |",
              "|:---|" + "---:|" * (len(preset.old) + 4)]
    for system in systems:
        cells = [_pct(summary["forgetting"][system][d]) for d in preset.old]
        cells += [_pct(summary["mean_forgetting"][system]), _pct(summary["new_gain"][system]),
                  _pct(summary["retention"].get(system)), _pct(summary["new_to_new_module"].get(system))]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    if summary.get("nll"):
        lines += ["", "## Gold-answer log-loss (nats per answer token) before → after, and changed answers", "",
                  "Forgetting where greedy accuracy sits at the floor: the mean negative log-likelihood of each test "
                  "row's gold answer after its prompt (lower is better), and the share of old test prompts whose "
                  "greedy answer changed.", "",
                  "| system | " + " | ".join(f"{d}{' (new)' if d == preset.new else ''}" for d in order)
                  + " | log-loss increase, old (mean) | new-distribution log-loss drop | old answers changed (%) |",
                  "|:---|" + "---:|" * (len(order) + 3)]
        for system in systems:
            cells = [f"{_num(summary['nll'][system][d]['before'])} → {_num(summary['nll'][system][d]['after'])}"
                     for d in order]
            cells += [_num(summary["mean_nll_increase"][system], signed=True),
                      _num(summary["new_nll_gain"][system], signed=True), _pct(summary["mean_answers_changed"][system])]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += ["", "Routing retention is measured on the old distributions' test prompts (the router's module after "
              "phase 2 = its module after phase 1); the single LoRA has no router (—)."]
    if summary.get("phase1_majority_share"):
        lines += ["", "Phase-1 router (before any module is added): share of each distribution's test prompts on its "
                  "most common module: " + "; ".join(f"{d} {_pct(ci)}" for d, ci in
                                                    summary["phase1_majority_share"].items()) + "."]
    lines += ["",
              "## Verdicts (computed from the per-seed values)", "",
              "| claim | verdict | evidence (mean [95% CI]) |", "|:---|:---|:---|"]
    for claim, entry in verdicts.items():
        evidence = entry["evidence"]
        if isinstance(evidence, dict):
            evidence = (f"{evidence['mean']:+.3f} [{evidence['ci95_low']:+.3f}, {evidence['ci95_high']:+.3f}], "
                        f"n = {evidence['n']}")
        lines.append(f"| {entry['claim']} | **{entry['verdict']}** | {evidence} |")
    lines += ["", "Rules: differences are paired within a seed. *Forgets less* / *prevents forgetting* / *learns*: "
              "supported when the 95% CI of the mean difference is above 0, not supported when it is below 2 points "
              "(0.01 nats for log-loss claims: a reduction or gain that large is excluded), inconclusive otherwise. *Unchanged*: supported when the "
              "CI lies within ±2 points, not supported when it lies outside, inconclusive otherwise. *Routes*: "
              "supported when the CI's low end is ≥ 0.90, not supported when its high end is < 0.90. Fewer than 2 "
              "seeds: inconclusive.", "",
              "![before and after](figures/before_after.png)", "",
              f"Per-seed wall time (s): {json.dumps(results['seconds'])}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the run
def resolve_base(base_model: str | None, preset: ContinualPreset, cache_dir: str | None, log) -> tuple[str, str]:
    """The named base, or the embedded default of the preset's size (built once, cached; the same recipe and cache
    as ``iclm experiment``)."""
    if base_model:
        return base_model, base_model
    from .runner import embedded_base

    path, _ = embedded_base(preset.base_preset, cache_dir, log)
    return path, (f"embedded default ({preset.base_preset} preset, {Path(path).name}): a small Llama pretrained on the "
                  "training splits — a CPU stand-in for a real LLM")


def check_base_context(base: str, preset: ContinualPreset, option: str = "--base-model") -> None:
    """Refuse, before anything trains, a base whose context window cannot hold the preset's rows."""
    from iclm.sources import check_preset_context

    check_preset_context(base, preset, option=option)


def run_continual(out, preset: ContinualPreset, base_model: str | None = None, cache_dir: str | None = None,
                  log=print) -> dict:
    """The whole study (see the module docstring); returns the ``results.json`` content."""
    from transformers import AutoTokenizer

    from iclm.analysis.baselines import split_baselines

    from .runner import environment, write_json

    started = time.time()
    check_preset(preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_path, description = resolve_base(base_model, preset, cache_dir, log)
    check_base_context(base_path, preset)
    fingerprint = {"preset": preset.to_dict(), "base": base_model or Path(base_path).name}
    stamp = out / "continual.json"
    if stamp.exists() and json.loads(stamp.read_text()) != fingerprint:
        raise ValueError(f"{out} holds a continual run with other settings; rerun it with the same options or choose "
                         "another --out.")
    write_json(stamp, fingerprint)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    phase1, phase2, tests, leakage = load_data(preset)
    log(f"Base: {description}. Phase 1: {len(phase1)} rows of {list(preset.old)}; phase 2: {len(phase2)} rows of "
        f"{preset.new}; {preset.seeds} seed(s); systems {list(preset.systems)}.")
    records = {}
    for seed in range(preset.seeds):
        path = out / "runs" / f"seed_{seed}.json"
        if path.exists():
            records[seed] = json.loads(path.read_text())
            log(f"seed {seed}: already done ({path}).")
            continue
        records[seed] = run_seed(seed, preset, base_path, tokenizer, phase1, phase2, tests, out, log)
        write_json(path, records[seed])
    per_seed = {seed: seed_measures(record, preset) for seed, record in records.items()}
    summary = summarise_seeds(per_seed, preset)
    verdicts = continual_verdicts(per_seed)
    baselines = {d: {k: v for k, v in split_baselines(rows).items() if k in ("chance", "majority", "answer_set_only")}
                 for d, rows in tests.items()}
    figure = plot_before_after(summary, preset, baselines, out / "figures" / "before_after.png")
    results = {
        "preset": preset.to_dict(), "base_model": description, "seeds": len(records), "old": list(preset.old),
        "new": preset.new, "test_splits": {d: split_of(d) for d in DISTRIBUTIONS}, "systems": list(preset.systems),
        "system_text": {s: SYSTEM_TEXT[s] for s in preset.systems}, "baselines": baselines, "summary": summary,
        "verdicts": verdicts, "verdict_line": verdict_line(verdicts), "per_seed": {str(s): m for s, m in per_seed.items()},
        "phase2_facts": {str(s): r["phase2"] for s, r in records.items()}, "leakage": leakage,
        "seconds": {str(s): r["seconds"] for s, r in records.items()},
        "wall_time_seconds": round(time.time() - started, 1), "figure": str(figure.relative_to(out)),
        **environment(),
    }
    write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    log(f"{results['verdict_line']}. Wrote {out / 'results.json'}, {out / 'results.md'} and {figure}.")
    return results


# ------------------------------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="run folder (new, empty, or an earlier continual run's: "
                        "finished seeds are kept)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="'smoke' (≤ 1 min, for tests; numbers mean nothing) or 'default' (3 seeds: 16 CPU-minutes, "
                             "23.5 min wall measured on 2 shared, busy CPU cores)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    parser.add_argument("--old", nargs="+", default=None, metavar="DIST",
                        help=f"phase-1 distributions among {', '.join(DISTRIBUTIONS)} (default: the preset's)")
    parser.add_argument("--new", default=None, metavar="DIST", help="the distribution added in phase 2")
    parser.add_argument("--systems", nargs="+", default=None, metavar="SYSTEM",
                        help=f"phase-2 systems among {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--anchor-weight", type=float, default=None,
                        help="iclm_added_anchored: weight of the L2 anchor of the invariant module (default 1.0)")
    parser.add_argument("--phase1-steps", type=int, default=None)
    parser.add_argument("--phase2-steps", type=int, default=None)
    parser.add_argument("--base-model", default=None,
                        help="causal LM folder or id (default: the embedded CPU stand-in, built once and cached)")
    parser.add_argument("--cache-dir", default=None, help="where the embedded default base is cached (~/.cache/iclm)")


def run(args) -> int:
    from iclm.sources import check_causal_lm, check_output_folder, resolve_model_source

    for name in ("seeds", "phase1_steps", "phase2_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    preset = get_preset(args.preset, seeds=args.seeds, new=args.new, anchor_weight=args.anchor_weight,
                        old=tuple(args.old) if args.old else None,
                        systems=tuple(args.systems) if args.systems else None,
                        phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps)
    check_output_folder(args.out, "--out", reusable=lambda folder: (folder / "continual.json").is_file(),
                        reuse="the folder of an earlier `iclm continual` run (finished seeds are kept)")
    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir", reusable=lambda folder: True)
    base = None
    if args.base_model is not None:
        base = resolve_model_source(args.base_model, option="--base-model")
        check_causal_lm(base, option="--base-model")
        check_base_context(base, preset)
    from iclm.terminal import quiet_run

    with quiet_run():
        run_continual(args.out, preset, base_model=base, cache_dir=args.cache_dir)
    return 0
