"""The ICLM model card: a template rendered with ``huggingface_hub.ModelCard.from_template``."""

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = os.path.join(os.path.dirname(__file__), "iclm_model_card.md")


def _captured_text(shares: dict[str, float]) -> str:
    if not shares:
        return "no labelled training input reached it"
    return ", ".join(f"{100 * share:.0f}% {name}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]))


def _training_length(args, state) -> str:
    """What was trained (from the ``TrainerState``), else what was asked for."""
    if state is not None and state.global_step:
        return f"{state.global_step} steps ({state.epoch or 0:.2f} epochs)"
    return f"max_steps {args.max_steps}" if args.max_steps > 0 else f"{args.num_train_epochs} epoch(s)"


def render_model_card(model, args, repo_id: str, eval_results: list[dict], captured: dict[str, dict[str, float]],
                      training_data: str | None = None, state=None) -> ModelCard:
    """Card for an ``IclmForCausalLM``; ``args`` (``IclmTrainingArguments``) adds the training recipe, or ``None``;
    ``state`` (the ``TrainerState``) the steps and epochs actually trained.

    ``eval_results``: dicts with ``task``, ``split``, ``ood`` (bool), ``accuracy`` (0-1), optional ``rendering``;
    they become the card's table and its ``model-index`` metadata.
    """
    config = model.config
    source = config.base_model_name_or_path
    # A Hub id links to its page; a local path or an in-memory base (stored in full here) does not.
    on_hub = bool(source) and not os.path.isabs(source) and not os.path.exists(source) and source.count("/") <= 1
    base = source or f"{config.text_config.model_type} base, stored in full in this repository"
    card_data = ModelCardData(
        base_model=source if on_hub else None,
        library_name="transformers",
        license=None,
        tags=["iclm", "lora", "peft", "mixture-of-adapters", "custom_code"],
        model_name=repo_id.split("/")[-1],
        eval_results=[
            EvalResult(task_type="text-generation", dataset_type=row["task"], dataset_name=row["task"].upper(),
                       dataset_split=row["split"], metric_type="accuracy", metric_value=float(row["accuracy"]),
                       metric_name=f"{row['split']} ({'o.o.d.' if row.get('ood') else 'in distribution'})")
            for row in eval_results
        ] or None,
    )
    rows = []
    if config.use_invariant_module:
        rows.append({"name": "invariant", "role": "domain-invariant, always active", "captured": "every input"})
    for k in range(config.num_domains):
        rows.append({"name": f"domain_{k}", "role": "domain-specific, routed",
                     "captured": _captured_text(captured.get(f"domain_{k}", {}))})
    router = f"{config.router_quantization} vector quantisation of {config.routing_level}-level prompt embeddings " \
             f"(projection to {config.router_dim} dims, {config.num_domains} centroids"
    kmeans = args is not None and args.router_init == "kmeans"
    router += f", k-means initialised over {args.router_init_samples} prompts)" if kmeans else ")"
    recipe = None if args is None else {
        "commitment_weight": args.commitment_loss_weight, "mi_weight": args.mi_loss_weight,
        "invariant_weight": args.invariant_loss_weight, "domain_weight": args.domain_loss_weight,
        "learning_rate": args.learning_rate, "batch_size": args.per_device_train_batch_size,
        "length": _training_length(args, state)}
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base,
        base_model_url=f"https://huggingface.co/{source}" if on_hub else None,
        base_by_reference=bool(source),
        tokenizer_source=source or repo_id,
        num_modules=len(config.module_names),
        num_domains=config.num_domains,
        invariant_sentence="one domain-invariant module that is always active, and" if config.use_invariant_module
        else "no invariant module (ablation), and",
        aggregation=config.aggregation,
        mi_sentence=", and a mutual-information loss pushes the invariant module toward domain-free mechanisms."
        if config.use_invariant_module else ".",
        module_rows=rows,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=", ".join(config.lora_target_modules),
        training_data=training_data or "not stated",
        recipe=recipe, router_beta=config.router_beta, router_description=router,
        eval_rows=[{"task": r["task"], "split": r["split"], "kind": "o.o.d." if r.get("ood") else "in distribution",
                    "accuracy": f"{100 * float(r['accuracy']):.1f}%"} for r in eval_results],
    )
