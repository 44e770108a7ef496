"""Training ICLM with the Hugging Face Trainer.

The model's own ``forward(labels=...)`` already returns the whole ICLM objective (aggregated CE plus the
router's VQ loss, the invariant/domain mutual information and each module's own CE, weighted by the
config), so a plain ``Trainer``, TRL or an accelerate loop trains all of it. ``IclmTrainer`` adds what
only a trainer can: it initialises the router codebook by k-means over router embeddings of training
prompts, restarts dead centroids, logs every loss component and the router's health, and pushes the
routed adapters, router, code and an ICLM model card to the Hub. ``IclmRouterCare`` holds that part for
any ``Trainer`` subclass (``iclm.trl.IclmSFTTrainer`` reuses it).
"""

import itertools
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import HubStrategy

from hub_iclm import upload_to_hub
from modeling_iclm import IclmForCausalLM

logger = logging.getLogger(__name__)

LOSS_COMPONENTS = ("lm_loss", "aux_loss", "commitment_loss", "mi_loss", "invariant_loss", "domain_loss")
ROUTER_STATE_NAME = "iclm_router_state.json"
RESTART_POOL = 256  # the most recent training prompts' router embeddings, which dead centroids restart from
ORACLE_WITHOUT_DOMAINS = (
    "use_oracle_routing=True routes each row by its true domain, but the batches have no `domain_ids`: give the rows "
    "a `domain_id` (iclm.tasks.AnswerOnlyCollator turns it into `domain_ids`) or turn oracle routing off."
)


LOSS_WEIGHTS = ("commitment_loss_weight", "mi_loss_weight", "invariant_loss_weight", "domain_loss_weight")


@dataclass
class IclmArguments:
    """ICLM's router options, and loss weights that override the model config's (the paper's by default)."""

    commitment_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight λ_vq of the router's VQ (commitment) loss (default: the model config's, 0.1)."})
    mi_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight λ_mi of the invariant/domain MI penalty (default: config's, 1.0; the paper: 0.01)."})
    invariant_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight λ_inv of the invariant module's own CE (default: config's, 0.1)."})
    domain_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight λ_dom of the routed domain module's own CE (default: config's, 0.1)."})
    router_init: str = field(
        default="kmeans",
        metadata={"help": "Codebook initialisation before the first step: 'kmeans' over router embeddings of "
                          "training prompts (the first router_init_samples rows of a streamed data set), or "
                          "'random' (keep the model's codebook)."},
    )
    router_init_samples: int = field(default=512, metadata={"help": "Training prompts embedded for the k-means initialisation."})
    router_init_iterations: int = field(default=50, metadata={"help": "Lloyd iterations of the k-means initialisation."})
    dead_centroid_steps: int = field(
        default=100,
        metadata={"help": "Restart a centroid that received no input for this many optimizer steps (0 = never)."},
    )
    freeze_router_projection: bool = field(
        default=False,
        metadata={"help": "Freeze the router's projection once the codebook is initialised (after k-means): only the "
                          "centroids learn. Trained (the paper, the default), the projection learns from the VQ loss "
                          "alone, which pulls prompt types that share a centroid together for good; frozen, they stay "
                          "apart (see the README's design notes)."},
    )
    router_collapse_share: float = field(
        default=0.95,
        metadata={"help": "Warn when one domain module receives at least this share of the inputs of a logging window."},
    )
    use_oracle_routing: bool = field(
        default=False,
        metadata={"help": "Route by the data's true `domain_ids` (the perfect-router baseline) instead of the router."},
    )
    cache_router_states: bool = field(
        default=False,
        metadata={"help": "Keep the frozen base's prompt states for the router: after a prompt's first pass (the k-means "
                          "pass, or the first epoch) routing costs no base forward. Memory: prompt tokens × hidden size "
                          "per distinct prompt. Input-level routing only."},
    )

    def __post_init__(self):
        for name in LOSS_WEIGHTS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0 (or unset: the model config's), got {value!r}.")
        if self.router_init not in ("kmeans", "random"):
            raise ValueError(f"router_init must be 'kmeans' or 'random', got {self.router_init!r}.")
        if self.dead_centroid_steps < 0:
            raise ValueError(f"dead_centroid_steps must be >= 0 (0 disables restarts), got {self.dead_centroid_steps}.")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()


@dataclass
class IclmTrainingArguments(IclmArguments, TrainingArguments):
    """`TrainingArguments` plus ICLM's router options and loss-weight overrides."""

    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep raw columns (prompt, answer) for the collator, which builds the model inputs."},
    )


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding then Lloyd iterations; returns [k, D] centroids (float32)."""
    points = points.float()
    centroids = [points[torch.randint(len(points), (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        distances = torch.cdist(points, torch.stack(centroids)).min(1).values ** 2
        probabilities = distances / distances.sum() if distances.sum() > 0 else torch.full_like(distances, 1 / len(points))
        centroids.append(points[torch.multinomial(probabilities, 1, generator=generator)].squeeze(0))
    centroids = torch.stack(centroids)
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(1)
        for j in range(k):
            members = points[assignment == j]
            if len(members):
                centroids[j] = members.mean(0)
    return centroids


class RestartedRows:
    """Adam(W) for codebook rows restarted mid-training, as if each had a fresh optimizer of its own.

    A restarted centroid's moments are zeroed (the old position's would drag it back), but Adam's bias correction
    uses the parameter's global step count t: with fresh moments at t = 1,000 a row moved 5.2x the learning rate per
    step (6.6x at t = 10,000) before its second moment caught up. Here each restarted row keeps its own step count s:
    after every optimizer step its update is recomputed with the corrections 1 - β^s instead of 1 - β^t (exactly,
    eps included, from the moments the step just wrote), until both agree to 1e-4. Optimizers without Adam moments
    (SGD, Adafactor, DeepSpeed's) are left alone: their moments, if any, are not per row.
    """

    def __init__(self):
        self.steps: dict[int, int] = {}  # restarted row -> optimizer steps since its restart
        self._hooked = None

    def restart(self, optimizer, parameter: torch.Tensor, rows: list[int]) -> None:
        state = getattr(optimizer, "state", {}).get(parameter, {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == parameter.shape:
                value[rows] = 0
        if "exp_avg" in state and self.hook(optimizer, parameter):
            for row in rows:
                self.steps[row] = 0

    def hook(self, optimizer, parameter: torch.Tensor) -> bool:
        """Correct ``parameter``'s restarted rows after every step of ``optimizer`` (once; again for a new one)."""
        if not hasattr(optimizer, "register_step_post_hook"):
            return False
        if self._hooked is None or self._hooked[0] is not optimizer:
            if self._hooked is not None:
                self._hooked[1].remove()
            handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.correct(opt, parameter))
            self._hooked = (optimizer, handle)
        return True

    @torch.no_grad()
    def correct(self, optimizer, parameter: torch.Tensor) -> None:
        state = optimizer.state.get(parameter, {})
        if not self.steps or "exp_avg" not in state:
            return
        group = next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))
        (beta1, beta2), eps, lr = group["betas"], group["eps"], float(group["lr"])
        t = int(state["step"])
        for row in list(self.steps):
            s = self.steps[row] = min(self.steps[row] + 1, t)
            m, v = state["exp_avg"][row].float(), state["exp_avg_sq"][row].float()
            if "max_exp_avg_sq" in state:  # amsgrad
                v = state["max_exp_avg_sq"][row].float()

            def update(n):
                return m / (1 - beta1 ** n) / ((v / (1 - beta2 ** n)).sqrt() + eps)

            # The step moved the row by -lr·update(t) (maximize is already in the moments' sign): make it -lr·update(s).
            parameter.data[row] += (lr * (update(t) - update(s))).to(parameter.dtype)
            if abs((1 - beta1 ** t) / (1 - beta1 ** s) - 1) < 1e-4 and abs((1 - beta2 ** s) / (1 - beta2 ** t) - 1) < 1e-4:
                del self.steps[row]


class IclmProgressCallback(ProgressCallback):
    """Progress without raw log dicts. On a terminal, transformers' bars (the training bar shows the latest losses,
    an evaluation bar vanishes when done); when stderr is not a terminal (a log file, a pipe), no bar. Every log is
    one compact line for this module's logger (INFO: ``logging.getLogger("trainer_iclm")``), and the end of training
    one summary line; nothing is printed to stdout."""

    def __init__(self, interactive: bool | None = None):
        super().__init__()
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.first_loss = self.last_loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step, self.first_loss, self.last_loss = 0, None, None
        if self.interactive:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interactive and self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.interactive:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.first_loss = logs["loss"] if self.first_loss is None else self.first_loss
            self.last_loss = logs["loss"]
        shown = {k: v for k, v in logs.items() if k != "total_flos" and isinstance(v, (int, float, str))}
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        if self.interactive and self.training_bar is not None and "loss" in logs:
            self.training_bar.set_postfix_str(f"loss {logs['loss']:.4g}", refresh=False)
        logger.info("step %d/%d: %s", state.global_step, state.max_steps, line)

    def on_train_end(self, args, state, control, **kwargs):
        if self.interactive and self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)
        if state.is_world_process_zero:
            losses = "" if self.first_loss is None else f", loss {self.first_loss:.4g} -> {self.last_loss:.4g}"
            logger.info("trained %d step(s)%s", state.global_step, losses)


def quiet_progress(trainer: Trainer) -> Trainer:
    """Give any Trainer :class:`IclmProgressCallback` instead of transformers' progress or printer callback (which
    print every log as a raw dict on stdout). IclmTrainer and IclmSFTTrainer do this themselves."""
    handler = trainer.callback_handler
    if any(isinstance(c, (ProgressCallback, PrinterCallback)) and not isinstance(c, IclmProgressCallback)
           for c in handler.callbacks):
        handler.remove_callback(ProgressCallback)
        handler.remove_callback(PrinterCallback)
        handler.add_callback(IclmProgressCallback())
    return trainer


class IclmRouterCare:
    """Router care for any `Trainer` subclass training an [`IclmForCausalLM`] (see the module docstring). Extra
    keywords: ``domain_names``, the names of the true training distributions (indexed by the data's
    ``domain_ids``), for logs and the card; ``training_data``, a description of the data for the model card
    (also of pushes made by ``save_model``). The args must carry [`IclmArguments`]."""

    def __init__(self, model=None, args=None, *trainer_args, domain_names: list[str] | None = None,
                 training_data: str | None = None, **kwargs):
        name = type(self).__name__
        if not isinstance(model, IclmForCausalLM):
            raise TypeError(
                f"{name} trains an IclmForCausalLM, got {type(model).__name__}: wrap your causal LM with "
                "IclmForCausalLM.from_base(base, num_domains=N)."
            )
        if not isinstance(args, IclmArguments):
            raise TypeError(
                f"{name} needs arguments with ICLM's router options (IclmTrainingArguments, or "
                f"iclm.trl.IclmSFTConfig), got {type(args).__name__}."
            )
        for weight in LOSS_WEIGHTS:  # explicit training arguments override the config's weights
            if getattr(args, weight) is not None:
                setattr(model.config, weight, getattr(args, weight))
        super().__init__(model, args, *trainer_args, **kwargs)
        quiet_progress(self)
        # The model normalises its token losses by the accumulated batch's token count (exact under accumulation).
        self.model_accepts_loss_kwargs = True
        self.domain_names = domain_names
        self.training_data = training_data
        n = model.config.num_domains
        self._last_used = [0] * n
        # Router embeddings to restart dead centroids from: the k-means sample until training embeddings replace it.
        self._recent_embeddings: torch.Tensor | None = None
        self._pool_is_initial = False
        self._restarts = RestartedRows()  # restarted centroids' own Adam step counts
        self._window = self._new_window()
        self._captured = torch.zeros(0, n, dtype=torch.long)  # true domain × route counts over training
        if self.train_dataset is not None:
            self._check_training_batches()

    # ------------------------------------------------------------------------------------ validation
    def _first_rows(self, count: int) -> list:
        """The first ``count`` training rows, for a sized or a streamed (iterable) data set alike."""
        if hasattr(self.train_dataset, "__len__") and hasattr(self.train_dataset, "__getitem__"):
            return [self.train_dataset[i] for i in range(min(count, len(self.train_dataset)))]
        return list(itertools.islice(iter(self.train_dataset), count))

    def _check_training_batches(self) -> None:
        rows = self._first_rows(8)
        if not rows:
            raise ValueError("The training data set is empty: give it at least one prompt/answer row.")
        try:
            sample = self.data_collator(rows)
        except Exception as error:  # the collator cannot build a batch at all
            raise ValueError(
                f"The data collator cannot build a training batch ({type(error).__name__}: {error}). Give "
                "prompt/answer rows and iclm.tasks.AnswerOnlyCollator, or tokenised rows with `labels`."
            ) from error
        if "labels" not in sample:
            raise ValueError(
                "The training batches have no `labels`: ICLM trains on answer-only labels (-100 on prompt tokens). "
                "Use iclm.tasks.AnswerOnlyCollator on prompt/answer rows, or add a `labels` column."
            )
        if self.args.use_oracle_routing and "domain_ids" not in sample:
            raise ValueError(ORACLE_WITHOUT_DOMAINS)

    # ---------------------------------------------------------------------------------- router set-up
    def _model(self) -> IclmForCausalLM:
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def initialize_router(self) -> torch.Tensor:
        """k-means over router embeddings of training prompts (a random sample of a sized data set, the first
        ``router_init_samples`` rows of a streamed one); the base is frozen, so they are computed once and kept
        as the pool that dead centroids restart from."""
        model = self._model()
        n = model.config.num_domains
        if self.train_dataset is None:
            raise ValueError("router_init='kmeans' needs a train_dataset to sample prompts from.")
        frozen = self._frozen_centroids(model)
        if frozen:
            raise ValueError(
                f"k-means initialisation would move the frozen centroid(s) of {[f'domain_{k}' for k in frozen]} "
                "(freeze_modules) and the routes of their distributions: keep the codebook (router_init='random'), "
                "or freeze_modules(..., router=False) first if their routes may change."
            )
        generator = torch.Generator().manual_seed(self.args.seed)
        if hasattr(self.train_dataset, "__len__") and hasattr(self.train_dataset, "__getitem__"):
            total = len(self.train_dataset)
            indices = torch.randperm(total, generator=generator)[: self.args.router_init_samples].tolist()
            rows = [self.train_dataset[i] for i in indices]
        else:
            rows = self._first_rows(self.args.router_init_samples)
            total = f"the first {len(rows)} of a streamed data set"
        if len(rows) < n:
            raise ValueError(
                f"k-means initialisation of {n} centroids needs at least {n} prompts, got {len(rows)} "
                f"(router_init_samples={self.args.router_init_samples}, training rows: {total}): "
                "raise router_init_samples, give more data, or use router_init='random'."
            )
        was_training = model.training
        model.eval()
        embeddings = []
        step = max(self.args.per_device_eval_batch_size, 1)
        for start in range(0, len(rows), step):
            batch = self._prepare_inputs(self.data_collator(rows[start : start + step]))
            routing = model.route(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                  labels=batch.get("labels"), position_ids=batch.get("position_ids"))
            embeddings.append(routing.embeddings.float().cpu())
        model.train(was_training)
        embeddings = torch.cat(embeddings)
        centroids = kmeans(embeddings, n, self.args.router_init_iterations, generator)
        model.router.codebook.data.copy_(centroids.to(model.router.codebook))
        self._recent_embeddings, self._pool_is_initial = embeddings, True
        logger.info("Initialised the router codebook by k-means over %d prompt embeddings.", len(embeddings))
        return centroids

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._last_complete_checkpoint()
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete checkpoint.")
        if resume_from_checkpoint:
            if not os.path.exists(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):
                raise ValueError(f"{resume_from_checkpoint} is not a complete checkpoint (no {TRAINER_STATE_NAME}: its "
                                 "save was interrupted). Resume from an earlier one, or resume_from_checkpoint=True.")
            # Here rather than in _load_from_checkpoint, which the Trainer skips under DeepSpeed.
            self._load_router_state(resume_from_checkpoint)
        if self.args.cache_router_states:
            self._model().cache_router_states(True)
        model = self._model()
        self._refuse_nothing_to_train(model)
        if not resume_from_checkpoint and self.args.router_init == "kmeans":
            frozen = self._frozen_centroids(model)
            if frozen:
                logger.warning(
                    "router_init='kmeans' skipped: the centroid(s) of %s are frozen (freeze_modules), and k-means "
                    "would move them and the routes of their distributions. The codebook is kept as it is "
                    "(add_domain_module placed the new centroid); pass router_init='random' to say so.",
                    ", ".join(f"domain_{k}" for k in frozen))
            else:
                self.initialize_router()
        if self.args.freeze_router_projection:  # before the optimizer is built and the model wrapped
            self._model().router.projection.requires_grad_(False)
        # Sequences that keep no target are counted in the logs (rows_without_target) instead of refused.
        model.model.count_rows_without_target, model.model.rows_without_target = True, 0
        self._without_target_warned = False
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        finally:
            model.model.count_rows_without_target = False

    @staticmethod
    def _frozen_centroids(model: IclmForCausalLM) -> list[int]:
        frozen = getattr(model.model, "_frozen_centroids", None)
        return [] if frozen is None else frozen.nonzero().flatten().tolist()

    @staticmethod
    def _refuse_nothing_to_train(model: IclmForCausalLM) -> None:
        """A model whose every trainable part is frozen (every module, the router and the aggregation) would take
        steps that change nothing, or only what must stay (the codebook): refuse it."""
        codebook = model.router.codebook
        all_frozen = len(IclmRouterCare._frozen_centroids(model)) == codebook.shape[0]
        if not any(p.requires_grad and not (p is codebook and all_frozen) for p in model.parameters()):
            raise ValueError(
                "Nothing to train: every module, the router (projection and every centroid) and the aggregation are "
                f"frozen (freeze_modules({list(model.config.module_names)})). Unfreeze something: freeze_modules with "
                "fewer names, or add_domain_module() for a fresh module to train."
            )

    def _last_complete_checkpoint(self) -> str | None:
        """The newest checkpoint whose save finished (the Trainer writes trainer_state.json last). Newer, interrupted
        ones are renamed ``checkpoint-N.incomplete``, so that nothing half-written keeps a checkpoint's name."""
        from transformers.trainer_utils import sort_checkpoints

        if not os.path.isdir(self.args.output_dir):
            return None
        for folder in reversed(sort_checkpoints(self.args.output_dir)):
            if os.path.exists(os.path.join(folder, TRAINER_STATE_NAME)):
                return folder
            logger.warning("%s was saved only in part (interrupted): it is renamed %s.incomplete and training resumes "
                           "from the checkpoint before it.", folder, os.path.basename(folder))
            if self.args.should_save:
                os.replace(folder, folder + ".incomplete")
        return None

    @torch.no_grad()
    def _restart_dead_centroids(self) -> None:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        if self._restarts.steps and optimizer is not None:  # rows restarted before a resume keep their own steps
            self._restarts.hook(optimizer, self._model().router.codebook)
        steps = self.args.dead_centroid_steps
        if not steps or self._recent_embeddings is None:
            return
        model = self._model()
        step = self.state.global_step
        if self.accelerator.num_processes > 1:  # all ranks must agree on which centroids are dead
            last_used = torch.tensor(self._last_used, device=self.args.device)
            torch.distributed.all_reduce(last_used, op=torch.distributed.ReduceOp.MAX)
            self._last_used = last_used.cpu().tolist()
        frozen = getattr(model.model, "_frozen_centroids", None)  # freeze_modules: their routes must stay
        dead = [k for k, last in enumerate(self._last_used) if step - last >= steps and not (
            frozen is not None and k < len(frozen) and bool(frozen[k]))]
        if not dead:
            return
        generator = torch.Generator().manual_seed(self.args.seed + step)
        # Without replacement, over distinct embeddings (a prompt seen twice is in the pool twice): two dead centroids
        # never land on one point. With fewer distinct embeddings than dead centroids, the rest wait for a later step.
        pool = torch.unique(self._recent_embeddings, dim=0)
        picks = torch.randperm(len(pool), generator=generator)[: len(dead)]
        dead = dead[: len(picks)]
        codebook = model.router.codebook
        for k, pick in zip(dead, picks.tolist()):
            codebook.data[k] = pool[pick].to(codebook)
            self._last_used[k] = step
        if optimizer is not None:  # fresh moments and a fresh bias correction: a new centroid's own optimizer
            self._restarts.restart(optimizer, codebook, dead)
        if self.accelerator.num_processes > 1:  # every rank keeps the same codebook
            torch.distributed.broadcast(codebook.data, src=0)
        logger.warning("Restarted dead router centroid(s) %s at step %d (no input for %d steps).", dead, step, steps)

    # ---------------------------------------------------------------------------------------- losses
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss (the whole ICLM objective), as `Trainer.compute_loss` takes it; only the logits of
        the last position are built unless the caller wants the outputs. Records routes and loss components."""
        true_domains = inputs.get("domain_ids")
        if self.args.use_oracle_routing and true_domains is None:
            raise ValueError(ORACLE_WITHOUT_DOMAINS)
        if not self.args.use_oracle_routing:
            inputs = {k: v for k, v in inputs.items() if k != "domain_ids"}
        if "labels" not in inputs:
            raise ValueError(f"{type(self).__name__} needs `labels` in every batch: answer-only labels (-100 on the "
                             "prompt, see iclm.tasks.AnswerOnlyCollator) or labels = input_ids.")
        if not return_outputs:
            inputs = {**inputs, "logits_to_keep": 1}
        if num_items_in_batch is not None and getattr(self, "_sequences_in_batch", None):
            inputs = {**inputs, "num_sequences_in_batch": self._sequences_in_batch}
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if model.training:
            self._record(outputs, true_domains)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """As the Trainer's, and the number of sequences with targets over the accumulated batch (all ranks): the
        per-input VQ term (``commitment_weighting='input'``) is then the full batch's mean under accumulation."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._sequences_in_batch = None
        if num_items_in_batch is not None and self._model().config.commitment_weighting == "input":
            count = sum(self._model().count_target_sequences(**sample) for sample in batch_samples)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                count = self.accelerator.gather(torch.tensor(count, device=self.args.device)).sum().item()
            self._sequences_in_batch = count
        return batch_samples, num_items_in_batch

    # --------------------------------------------------------------------------------------- logging
    def _new_window(self) -> dict:
        return {"sums": {name: 0.0 for name in LOSS_COMPONENTS}, "count": 0,
                "routes": torch.zeros(self._model().config.num_domains, dtype=torch.long)}

    @torch.no_grad()
    def _record(self, outputs, true_domains) -> None:
        without = self._model().model.rows_without_target
        if without and not getattr(self, "_without_target_warned", True):
            self._without_target_warned = True
            logger.warning(
                "%d training sequence(s) were labelled from their start (labels = input_ids) with at most "
                "router_prefix_length=%s tokens: the router reads those tokens, so they keep no target and add nothing "
                "to the loss. The running count is logged as rows_without_target. Give longer rows, answer-only "
                "labels, or a smaller router_prefix_length.", without, self._model().config.router_prefix_length)
        window = self._window
        for name in LOSS_COMPONENTS:
            value = getattr(outputs, name)
            if value is not None:
                window["sums"][name] += value.detach().float().item()
        window["count"] += 1
        if outputs.routes is None:
            return
        routes = outputs.routes.detach().cpu()
        n = window["routes"].numel()
        window["routes"] += torch.bincount(routes, minlength=n)
        used = routes if outputs.token_routes is None else torch.cat([routes, outputs.token_routes.detach().cpu().flatten()])
        for k in used.unique().tolist():
            self._last_used[k] = self.state.global_step + 1  # the step count once the step being taken ends
        if outputs.router_embeddings is not None:
            # Embeddings of the current projection only: the k-means sample's were made with the initial one.
            recent = outputs.router_embeddings.detach().float().cpu()
            keep = None if self._recent_embeddings is None or self._pool_is_initial else self._recent_embeddings
            self._recent_embeddings = (recent if keep is None else torch.cat([keep, recent]))[-RESTART_POOL:]
            self._pool_is_initial = False
        if true_domains is not None:
            true_domains = true_domains.detach().cpu().long()
            rows = int(true_domains.max()) + 1
            if rows > self._captured.shape[0]:
                self._captured = torch.cat([self._captured, torch.zeros(rows - self._captured.shape[0], n, dtype=torch.long)])
            self._captured.index_put_((true_domains, routes), torch.ones_like(routes), accumulate=True)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._restart_dead_centroids()
        return super().training_step(model, inputs, num_items_in_batch)

    def router_health(self, counts: torch.Tensor) -> dict[str, float]:
        """Share of inputs per domain module and codebook usage perplexity (N = all modules used evenly)."""
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(self.args.device), reduction="sum").cpu()
        total = counts.sum().item()
        if total == 0:
            return {}
        shares = counts.float() / total
        entropy = -(shares[shares > 0] * shares[shares > 0].log()).sum().item()
        health = {f"route_share/domain_{k}": round(s, 4) for k, s in enumerate(shares.tolist())}
        health["codebook_perplexity"] = round(math.exp(entropy), 4)
        if len(counts) > 1 and shares.max().item() >= self.args.router_collapse_share:
            logger.warning(
                "Routing collapsed: %.0f%% of the inputs went to domain_%d. Try router_init='kmeans', a larger "
                "commitment_loss_weight, or dead_centroid_steps > 0 (restarts unused centroids on recent prompts).",
                100 * shares.max().item(), shares.argmax().item(),
            )
        return health

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        window = self._window
        if "loss" in logs and window["count"]:
            for name, total in window["sums"].items():
                if total:
                    logs[name] = round(total / window["count"], 6)
            logs.update(self.router_health(window["routes"]))
            if self._model().model.rows_without_target:
                logs["rows_without_target"] = self._model().model.rows_without_target
            self._window = self._new_window()
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------- saving and resuming
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """As `Trainer._save`, with the training arguments as JSON instead of a pickle."""
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if self.args.should_save and os.path.exists(pickled):
            os.remove(pickled)
            with open(os.path.join(output_dir, "training_args.json"), "w") as f:
                f.write(self.args.to_json_string())

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            state = {"last_used": self._last_used, "captured": self._captured.tolist(), "restarted": self._restarts.steps,
                     "recent_embeddings": None if self._recent_embeddings is None else self._recent_embeddings.tolist()}
            with open(os.path.join(folder, ROUTER_STATE_NAME), "w") as f:
                json.dump(state, f)

    def _load_router_state(self, checkpoint_folder: str) -> None:
        """The router's training state (centroid use, captured domains, embedding pool) saved with a checkpoint."""
        path = os.path.join(checkpoint_folder, ROUTER_STATE_NAME)
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self._last_used = state["last_used"]
            self._restarts.steps = {int(row): steps for row, steps in state.get("restarted", {}).items()}
            self._captured = torch.tensor(state["captured"], dtype=torch.long).reshape(-1, len(self._last_used))
            if state["recent_embeddings"] is not None:
                self._recent_embeddings = torch.tensor(state["recent_embeddings"])

    # -------------------------------------------------------------------------------------- the Hub
    def captured_domains(self) -> dict[str, dict[str, float]]:
        """For each domain module, the share of its training inputs that came from each true distribution."""
        given = self.domain_names or []
        names = [given[i] if i < len(given) else f"distribution {i}" for i in range(self._captured.shape[0])]
        captured = {}
        for k in range(self._captured.shape[1]):
            column = self._captured[:, k]
            total = column.sum().item()
            captured[f"domain_{k}"] = {names[i]: round(c / total, 4) for i, c in enumerate(column.tolist()) if c} if total else {}
        return captured

    def push_to_hub(self, commit_message: str = "Upload ICLM", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, repo_id: str | None = None, eval_results: list[dict] | None = None,
                    training_data: str | None = None, **kwargs):
        """Save the model (routed adapters as PEFT folders, router, aggregation, config with auto_map, code files)
        and the ICLM model card to ``<output_dir>/hub``, then upload that folder. Returns the commit URL (with
        ``blocking=False``, the upload's ``Future``).

        ``eval_results``: dicts with task, split, ood (bool), accuracy — written as model-index metadata.
        """
        repo_id = repo_id or self.args.hub_model_id or self.hub_model_id  # the latter set by init_hf_repo
        if not repo_id:
            raise ValueError("push_to_hub needs a repository id: set hub_model_id in the training arguments "
                             "(--hub_model_id user/name) or pass repo_id='user/name'.")
        folder = os.path.join(self.args.output_dir, "hub")
        if self.args.should_save:
            shutil.rmtree(folder, ignore_errors=True)
        self.save_model(folder, _internal_call=True)
        if not self.args.should_save:
            return ""
        return upload_to_hub(self._model(), folder, repo_id, args=self.args, token=token or self.args.hub_token,
                             private=self.args.hub_private_repo, commit_message=commit_message, revision=revision,
                             blocking=blocking, eval_results=eval_results, captured=self.captured_domains(),
                             training_data=training_data or self.training_data, state=self.state)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoint pushes (``push_to_hub=True``, ``hub_strategy`` other than "end") upload the same complete,
        loadable folder as :meth:`push_to_hub` (the Trainer's own would upload a bare ``model.safetensors`` and
        ``config.json`` with no code, adapters or card). The checkpoint folder itself is not uploaded. A failed
        upload is logged, not raised: training goes on and the checkpoint is on disk."""
        if self.args.hub_strategy == HubStrategy.END:
            return
        try:
            self.push_to_hub(commit_message=f"Training in progress, step {self.state.global_step}")
        except ConnectionError as error:
            logger.warning("Checkpoint push failed; training goes on. %s", error)


class IclmTrainer(IclmRouterCare, Trainer):
    """A `Trainer` for [`IclmForCausalLM`] with router care (see [`IclmRouterCare`]); takes IclmTrainingArguments."""


__all__ = ["IclmArguments", "IclmProgressCallback", "IclmRouterCare", "IclmTrainer", "IclmTrainingArguments",
           "RestartedRows", "kmeans", "quiet_progress", "upload_to_hub"]
