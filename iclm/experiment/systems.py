"""The compared systems, all on the same base, data and step budget.

* ``base``: the base model, no fine-tuning;
* ``single_lora``: one PEFT LoRA fine-tune (the paper's baseline);
* ``iclm_no_invariant``: ICLM without the invariant module (routed domain modules only);
* ``iclm``: the full ICLM; ``iclm_oracle``: ICLM routed by the true training distribution;
* ``iclm_invariant_only`` / ``iclm_domain_only``: the trained ``iclm``'s invariant module alone, and its
  routed domain module alone (evaluated, not trained).
"""

import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from iclm.tasks import AnswerOnlyCollator
from lora_iclm import default_target_modules
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments, quiet_progress

TRAINED = ("single_lora", "iclm_no_invariant", "iclm", "iclm_oracle")
DERIVED = {"iclm_invariant_only": ("iclm", "invariant"), "iclm_domain_only": ("iclm", "domain")}
SYSTEMS = ("base",) + TRAINED + tuple(DERIVED)


def check_systems(names) -> list[str]:
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"Unknown system(s) {unknown}; expected names from {', '.join(SYSTEMS)}.")
    return [name for name in SYSTEMS if name in names]  # canonical order: trained ICLM before its modules


def load_base(base_path: str, load_kwargs: dict):
    return AutoModelForCausalLM.from_pretrained(base_path, **load_kwargs)


def _common_arguments(preset, seed: int, output_dir: str) -> dict:
    return dict(output_dir=output_dir, per_device_train_batch_size=preset.batch_size, max_steps=preset.max_steps,
                learning_rate=preset.learning_rate, lr_scheduler_type=preset.lr_scheduler_type,
                warmup_steps=round(preset.warmup_ratio * preset.max_steps), seed=seed,
                data_seed=seed, logging_steps=max(preset.max_steps // 10, 1), save_strategy="no", report_to="none",
                remove_unused_columns=False, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                disable_tqdm=False, dataloader_num_workers=0,
                train_sampling_strategy="group_by_length" if preset.group_by_length else "random",
                length_column_name="length",
                dataloader_pin_memory=torch.cuda.is_available())


class LearningCurve(TrainerCallback):
    """Accuracy (:func:`iclm.experiment.evaluation.answer_token_accuracy`) on fixed rows every ``every`` steps and
    at the start and the end of training, for one or several views of the model being trained (an ICLM's
    invariant and routed domain modules alone come for free). Reported only: nothing is selected on it."""

    def __init__(self, views: dict, curve_sets: dict, every: int, max_steps: int, tokenizer, preset):
        self.views, self.curve_sets, self.every, self.max_steps = views, curve_sets, every, max_steps
        self.tokenizer, self.preset = tokenizer, preset
        self.steps: list[int] = []
        self.values = {name: {split: [] for split in curve_sets} for name in views}

    def _record(self, model, step: int) -> None:
        from .evaluation import answer_token_accuracy

        if self.steps and self.steps[-1] == step:
            return
        was_training = model.training
        model.eval()
        for name, view in self.views.items():
            for split, rows in self.curve_sets.items():
                self.values[name][split].append(answer_token_accuracy(
                    model, self.tokenizer, rows, batch_size=self.preset.eval_batch_size,
                    max_length=self.preset.eval_max_length, **view))
        model.train(was_training)
        self.steps.append(step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= self.max_steps:
            self._record(model, state.global_step)

    def result(self) -> dict:
        return {name: {"steps": list(self.steps), "splits": values} for name, values in self.values.items()}


def train_system(system: str, base_path: str, load_kwargs: dict, tokenizer, train_dataset, preset, seed: int,
                 model_dir: str, domain_names: list[str], curve_sets: dict | None = None):
    """Fine-tune ``system`` from a fresh copy of the base; saves it in ``model_dir`` and returns it in eval mode,
    the Trainer's log history and the learning curves (``{}`` without ``curve_sets`` / ``preset.curve_every``)."""
    collator = AnswerOnlyCollator(tokenizer, max_length=preset.max_length, padding_side="right")
    base = load_base(base_path, load_kwargs)
    scratch = os.path.join(model_dir, "_trainer")
    if system == "single_lora":
        config = LoraConfig(r=preset.lora_r, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
                            target_modules=default_target_modules(base), task_type="CAUSAL_LM")
        model = get_peft_model(base, config)
        trainer = quiet_progress(Trainer(model=model, args=TrainingArguments(**_common_arguments(preset, seed, scratch)),
                                         train_dataset=train_dataset, data_collator=collator))
    else:
        model = IclmForCausalLM.from_base(base, num_domains=preset.num_domains,
                                          use_invariant_module=system != "iclm_no_invariant", lora_r=preset.lora_r,
                                          lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
                                          adapter_layers=preset.adapter_layers)
        args = IclmTrainingArguments(**_common_arguments(preset, seed, scratch),
                                     use_oracle_routing=system == "iclm_oracle",
                                     router_init="random" if system == "iclm_oracle" else "kmeans",
                                     router_init_samples=min(512, len(train_dataset)))
        trainer = IclmTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                              domain_names=domain_names)
    curve = None
    if curve_sets and preset.curve_every:
        views = {system: {"oracle": system == "iclm_oracle"}}
        if system == "iclm":
            views.update({name: {"module": module} for name, (source, module) in DERIVED.items() if source == "iclm"})
        curve = LearningCurve(views, curve_sets, preset.curve_every, preset.max_steps, tokenizer, preset)
        trainer.add_callback(curve)
    trainer.train()
    model.save_pretrained(model_dir)
    return model.eval(), trainer.state.log_history, (curve.result() if curve else {})


def load_trained(system: str, base_path: str, load_kwargs: dict, model_dir: str):
    """A system saved by :func:`train_system` (used on resume, and for the ICLM's single-module systems)."""
    if system == "single_lora":
        return PeftModel.from_pretrained(load_base(base_path, load_kwargs), model_dir).eval()
    return IclmForCausalLM.from_pretrained(model_dir, base_model_name_or_path=base_path, **load_kwargs).eval()
