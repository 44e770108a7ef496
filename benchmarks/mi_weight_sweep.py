"""MI weight sweep (issue 17, item 3): how strongly the MI penalty pulls at each weight λ_mi, on a tiny ICLM.

A 2-layer Llama (hidden 64, random and frozen) with two domain modules learns two toy tasks (domain a: the answer is
x{sum of the prompt's numbers mod 3}; domain b: y{first number mod 3}), 200 steps of AdamW on the model's own loss,
for each λ_mi and each estimator. Reported on held-out rows: the aggregated LM loss and answer accuracy, the dependence
between the two modules' contributions at the answer positions (linear CKA of h_inv − h_base and h_dom − h_base, and
the MI penalty), and the MI gradient's size relative to the CE gradient (‖∇ MI‖ / ‖∇ CE‖ over the trained parameters,
per unit λ, at the first step). About 2-3 CPU-minutes with one thread:

    OMP_NUM_THREADS=1 python benchmarks/mi_weight_sweep.py [--steps 200] [--seeds 0 1]
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from iclm.tasks import AnswerOnlyCollator  # noqa: E402
from modeling_iclm import IclmForCausalLM  # noqa: E402


def tokenizer():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in [f"{p}{i}" for p in "ab" for i in range(10)] + [f"{p}{i}" for p in "xy" for i in range(3)]:
        vocab[word] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def rows(count, seed):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        domain = i % 2
        numbers = [rng.randrange(10) for _ in range(rng.randint(3, 6))]
        answer = f"x{sum(numbers) % 3}" if domain == 0 else f"y{numbers[0] % 3}"
        out.append({"prompt": " ".join(f"{'ab'[domain]}{n}" for n in numbers) + " ", "answer": answer, "domain_id": domain})
    return out


def model_for(seed, vocab_size, **config):
    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    return IclmForCausalLM.from_base(base, num_domains=2, lora_dropout=0.0, **config)


def cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.t() @ y).norm() ** 2 / ((x.t() @ x).norm() * (y.t() @ y).norm()).clamp_min(1e-12))


def gradient_ratio(model, batch):
    """‖∇ MI‖ / ‖∇ CE‖ over the trainable parameters (per unit weight)."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(**batch)
    norms = []
    for term in (out.mi_loss, out.lm_loss):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms.append(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return float(norms[0] / norms[1])


@torch.no_grad()
def evaluate(model, batches):
    model.eval()
    losses, correct, total, inv, dom, base, penalties = [], 0, 0, [], [], [], []
    for batch in batches:
        out = model(**batch, output_hidden_states=True)
        answer = batch["labels"][:, 1:] != -100
        h_inv, h_dom = out.invariant_states[:, :-1][answer], out.domain_states[:, :-1][answer]
        plain = {k: v for k, v in batch.items() if k != "labels"}
        h_base = model(**plain, module="base", output_hidden_states=True).hidden_states[-1][:, :-1][answer]
        inv.append(h_inv - h_base), dom.append(h_dom - h_base), base.append(h_base)
        losses.append(float(out.lm_loss))
        penalties.append(float(out.mi_loss))
        predicted = out.logits[:, :-1].argmax(-1)
        correct += int((predicted[answer] == batch["labels"][:, 1:][answer]).sum())
        total += int(answer.sum())
    model.train()
    return {"lm_loss": sum(losses) / len(losses), "accuracy": correct / total,
            "contribution_cka": cka(torch.cat(inv), torch.cat(dom)), "mi_penalty": sum(penalties) / len(penalties)}


def run(weight, estimator, seed, steps, tok, collator):
    config = {"mi_loss_weight": weight} if estimator == "iclm" else {"mi_loss_weight": weight, "mi_debiased": False}
    model = model_for(seed, len(tok), **config).train()
    train, held_out = rows(512, seed), rows(128, 1000 + seed)
    batches = [collator(train[i:i + 16]) for i in range(0, len(train), 16)]
    eval_batches = [collator(held_out[i:i + 32]) for i in range(0, len(held_out), 32)]
    ratio = sum(gradient_ratio(model, b) for b in batches[:4]) / 4
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    result = {"estimator": estimator, "weight": weight, "seed": seed, "grad_ratio_per_unit_weight": ratio}
    result.update(evaluate(model, eval_batches))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0, 10.0, 100.0])
    parser.add_argument("--paper-weights", type=float, nargs="*", default=[0.01, 10.0])
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tok = tokenizer()
    collator = AnswerOnlyCollator(tok, max_length=32, padding_side="right")
    results = []
    grid = [("iclm", w) for w in args.weights] + [("paper", w) for w in args.paper_weights]
    for estimator, weight in grid:
        for seed in args.seeds:
            start = time.time()
            result = run(weight, estimator, seed, args.steps, tok, collator)
            result["seconds"] = round(time.time() - start, 1)
            results.append(result)
            print(json.dumps(result), flush=True)
    print(f"\n| estimator | λ_mi | ‖∇MI‖/‖∇CE‖ per unit λ | held-out LM loss | accuracy | CKA(contributions) | MI penalty |")
    print("|---|---|---|---|---|---|---|")
    for estimator, weight in grid:
        group = [r for r in results if r["estimator"] == estimator and r["weight"] == weight]
        mean = {k: sum(r[k] for r in group) / len(group) for k in
                ("grad_ratio_per_unit_weight", "lm_loss", "accuracy", "contribution_cka", "mi_penalty")}
        print(f"| {estimator} | {weight:g} | {mean['grad_ratio_per_unit_weight']:.2e} | {mean['lm_loss']:.3f} | "
              f"{mean['accuracy']:.3f} | {mean['contribution_cka']:.3f} | {mean['mi_penalty']:.2e} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
