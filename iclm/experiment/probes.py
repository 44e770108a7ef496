"""What a trained ICLM does at inference: where the router sends each distribution, and how
correlated the invariant module's states stay with each domain module's (at the position that
predicts the answer)."""

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


@torch.no_grad()
def independence_probe(model, tokenizer, test_sets: dict, preset) -> dict:
    """Per split: CKA and MI between the invariant states and the routed / each domain module's states."""
    device = next(model.parameters()).device
    states_by_split = {}
    for split, rows in test_sets.items():
        invariant, routed = [], []
        modules = {f"domain_{k}": [] for k in range(model.config.num_domains)}
        for batch in _batches(rows[: preset.analysis_rows], tokenizer, preset):
            inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
            full = model(**inputs, output_hidden_states=True)
            invariant.append(full.invariant_states[:, -1].float().cpu())
            routed.append(full.domain_states[:, -1].float().cpu())
            for k in range(model.config.num_domains):
                modules[f"domain_{k}"].append(model(**inputs, module=k, output_hidden_states=True).domain_states[:, -1].float().cpu())
        states_by_split[split] = {"invariant": torch.cat(invariant).numpy(), "domain": torch.cat(routed).numpy(),
                                  "domain_modules": {k: torch.cat(v).numpy() for k, v in modules.items()}}
    return independence_table(states_by_split)
