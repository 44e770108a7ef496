"""Supervised fine-tuning of an ICLM with TRL: ``IclmSFTTrainer``, a drop-in ``trl.SFTTrainer``.

TRL's ``SFTTrainer`` computes its loss with a fused LM head: it runs ``model.base_model`` without labels
and scores ``last_hidden_state`` itself. For an ICLM that would let the router read the completion and
would drop the router's VQ loss, the mutual information and the per-module CE terms (the backbone refuses
such a call in training mode rather than train the wrong thing). ``IclmSFTTrainer`` keeps everything TRL
does to the data (prompt–completion or language-modeling datasets, completion-only loss, chat templates,
packing, padding-free batches) and takes the loss from the model's own ``forward(labels=...)``: the
whole ICLM objective, exact under gradient accumulation. It adds the router care of ``IclmTrainer``
(k-means codebook initialisation, dead-centroid restarts, loss-component and router-health logs, Hub
push with the ICLM card); its arguments are ``IclmSFTConfig`` (``SFTConfig`` + ICLM's router options).
"""

from dataclasses import dataclass

from trl import SFTConfig, SFTTrainer

from trainer_iclm import IclmArguments, IclmRouterCare


@dataclass
class IclmSFTConfig(IclmArguments, SFTConfig):
    """`trl.SFTConfig` plus ICLM's router options and loss-weight overrides (see `IclmArguments`)."""


class IclmSFTTrainer(IclmRouterCare, SFTTrainer):
    """`trl.SFTTrainer` for [`IclmForCausalLM`]: TRL's data handling, the model's own ICLM objective as the loss.

    Takes `IclmSFTConfig`; `IclmTrainingArguments` are converted to it (as TRL converts plain `TrainingArguments`
    to `SFTConfig`), keeping every ICLM option."""

    def __init__(self, model=None, args=None, *trainer_args, **kwargs):
        if isinstance(args, IclmArguments) and not isinstance(args, SFTConfig):
            values = args.to_dict()
            values["hub_token"] = args.hub_token  # to_dict() masks it
            args = IclmSFTConfig(**{k: v for k, v in values.items() if k in IclmSFTConfig.__dataclass_fields__})
        super().__init__(model, args, *trainer_args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        for key in ("use_cache", "output_router_logits"):  # TRL's additions for its own forward
            inputs.pop(key, None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        if mode == "train":  # TRL's token counter, which its logs report as num_tokens
            mask = inputs.get("attention_mask")
            local = mask.sum() if mask is not None else inputs["input_ids"].new_tensor(inputs["input_ids"].numel())
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


__all__ = ["IclmSFTConfig", "IclmSFTTrainer"]
