"""What a trained ICLM does at inference: where the router sends each distribution, and how
correlated what the invariant module adds to the base stays with what each domain module adds (at the
position that predicts the answer)."""

import torch

from iclm.analysis import independence_table, routing_report
from iclm.tasks import AnswerOnlyCollator


def _batches(rows, tokenizer, preset):
    collator = AnswerOnlyCollator(tokenizer, max_length=preset.eval_max_length, return_prompt_only=True)
    for start in range(0, len(rows), preset.eval_batch_size):
        yield collator(rows[start : start + preset.eval_batch_size])


@torch.no_grad()
def router_probe(model, tokenizer, rows, preset) -> dict:
    """Routes and pooled router embeddings of each row's prompt, with its true distribution."""
    device = next(model.parameters()).device
    routes, embeddings, truth = [], [], []
    for batch in _batches(rows, tokenizer, preset):
        routing = model.route(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        routes += routing.routes.tolist()
        embeddings += routing.embeddings.float().cpu().tolist()
        truth += batch["domain_ids"].tolist()
    report = routing_report(routes, truth, num_routes=model.config.num_domains)
    return {"report": report, "routes": routes, "true_domains": truth, "embeddings": embeddings}


ROUNDING = 1e-5  # relative size below which a state difference is float rounding between two passes, not a change


def contribution(states: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """What a module adds to the base at each row: ``states - base``, with differences at float-rounding size (the
    module's pass and the base's differ in batch layout, so an untrained module differs by ~1e-7) set to exactly 0."""
    added = states - base
    return torch.where(added.abs() > ROUNDING * base.abs().amax().clamp_min(1e-12), added, torch.zeros_like(added))


@torch.no_grad()
def independence_probe(model, tokenizer, test_sets: dict, preset) -> dict:
    """Per split: CKA and MI between what the invariant module adds and what the routed / each domain module adds.

    A module's contribution is its last hidden state minus the frozen base's at the same position (the state
    that predicts the answer). The raw states of two modules on one frozen base share the base's whole
    representation, so they look alike whatever the modules learned (an untrained ICLM has raw-state CKA 1);
    their contributions are what the modules learned, and what the MI penalty is meant to keep apart. An
    untrained ICLM adds nothing: its contributions are constant and the CKA is undefined (nan), never a verdict.
    """
    device = next(model.parameters()).device
    states_by_split = {}
    for split, rows in test_sets.items():
        invariant, routed = [], []
        modules = {f"domain_{k}": [] for k in range(model.config.num_domains)}
        for batch in _batches(rows[: preset.analysis_rows], tokenizer, preset):
            inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
            base = model(**inputs, module="base").domain_states[:, -1].float().cpu()
            full = model(**inputs)
            invariant.append(contribution(full.invariant_states[:, -1].float().cpu(), base))
            routed.append(contribution(full.domain_states[:, -1].float().cpu(), base))
            for k in range(model.config.num_domains):
                modules[f"domain_{k}"].append(contribution(model(**inputs, module=k).domain_states[:, -1].float().cpu(),
                                                           base))
        states_by_split[split] = {"invariant": torch.cat(invariant).numpy(), "domain": torch.cat(routed).numpy(),
                                  "domain_modules": {k: torch.cat(v).numpy() for k, v in modules.items()}}
    return independence_table(states_by_split)
