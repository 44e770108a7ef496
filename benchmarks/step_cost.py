"""Training-step, generation and memory cost of ICLM against one PEFT LoRA model and the paper code's design.

Why: the paper's public code keeps N+2 full copies of the base and runs every domain copy on every
input (DESIGN.md §2: N=2 → 4.2× the step time of one LoRA model, N=4 → 6.5×). ICLM runs one frozen
base over 2B rows instead. This script measures all three designs in ONE run on one machine, on a
tiny Llama built from a config (no Hub), so the ratios compare like with like.

Each measurement runs in its own child process, forked after the parent has imported torch,
transformers and peft but before it has run a single tensor op. So allocator state left by one
variant cannot help or hurt the next, and the child's peak memory is its own: it resets its RSS
high-water mark (/proc/self/clear_refs) and reports VmHWM minus its RSS at start, i.e. everything
the variant allocated (weights, copies of the base, adapters, optimizer state, activations,
gradients). tracemalloc would miss torch's tensors (they bypass Python's allocator).

The variants are timed round-robin (one step each, in rotating order), wall clock and process CPU
time both. torch runs one thread by default: on a machine shared with other jobs, OpenMP threads
that wait at barriers for a descheduled sibling made 0.3–0.7 s steps take up to 13 s, while one
thread's CPU time repeats within ~1% (pass --threads to change it).

    python benchmarks/step_cost.py                 # default sizes (≈4.2M-param base, batch 8 × 256)
    python benchmarks/step_cost.py --quick         # smoke test
    python benchmarks/step_cost.py --profile iclm2-router   # where one variant's step time goes
"""

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
import warnings
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside PEFT

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from modeling_iclm import IclmCausalLMOutput, IclmForCausalLM, mutual_information  # noqa: E402
from router_iclm import VectorQuantizedRouter  # noqa: E402

# Paper config (DESIGN.md §1): loss weights of VQ, MI, invariant-alone CE, domain-alone CE; LoRA r/α/dropout.
LOSS_WEIGHTS = {"commitment_loss": 0.1, "mi_loss": 0.01, "invariant_loss": 0.1, "domain_loss": 0.1}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LEARNING_RATE = 5e-4

# The project's targets for ICLM; the paper design's numbers measured in the same run are printed beside them.
TARGET_PARAMS_PCT = 15.0
TARGET_STEP_RATIO = 2.2
TARGET_SCALING = 1.1

QUICK = {"vocab": 128, "hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "batch": 4, "seq": 32,
         "answer": 2, "steps": 2, "warmup": 1, "prompt": 16, "new_tokens": 4, "gen_repeats": 1}


# ------------------------------------------------------------------------------------------------ inputs
def lora_config() -> LoraConfig:
    """A fresh config per model: get_peft_model records per-model state in it."""
    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def build_base(args) -> LlamaForCausalLM:
    """The same randomly initialised tiny Llama in every child (fixed seed); no eos, so generation never stops early."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, args.prompt + args.new_tokens), tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def make_batch(args, length: int, labelled: bool = True) -> dict:
    """Random tokens; answer-only labels: only the last ``args.answer`` tokens are labelled, as in the paper."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, args.vocab, (args.batch, length), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if labelled:
        labels = input_ids.clone()
        labels[:, :-args.answer] = -100
        batch["labels"] = labels
    return batch


def spread_domains(batch_size: int, num_domains: int) -> torch.Tensor:
    """Oracle routes covering every domain: row i → domain i mod N."""
    return torch.arange(batch_size) % num_domains


# ------------------------------------------------------------------------------------------------ models
def total_loss(out) -> torch.Tensor:
    """The paper's total loss for the paper-design emulation: CE(aggregated) + weighted VQ, MI, invariant-alone and
    domain-alone CE (an IclmForCausalLM returns this sum as its own ``loss``)."""
    return out.loss + sum(weight * getattr(out, name) for name, weight in LOSS_WEIGHTS.items())


@torch.no_grad()
def spread_codebook(model: IclmForCausalLM, batch: dict) -> None:
    """Put centroid k at the mean router embedding of rows i ≡ k (mod N), so the *router* spreads rows over all domains.

    With a random codebook every random-token row tends to land on one centroid, and an ICLM step would
    then train one domain module only: cheaper than a real step.
    """
    n = model.config.num_domains
    embeddings = model.route(batch["input_ids"], batch["attention_mask"], batch.get("labels")).embeddings
    groups = spread_domains(embeddings.shape[0], n)
    for k in range(n):
        if (groups == k).any():
            model.router.codebook[k] = F.normalize(embeddings[groups == k].mean(0), dim=-1)


class PaperStyleIclm(nn.Module):
    """The paper code's design, rebuilt on this project's losses so that only the architecture differs.

    N+2 full copies of the base: a router copy (frozen, run without gradient: cheaper than the paper's
    code, whose router copy also carries a LoRA that the VQ loss trains), an invariant copy and N domain
    copies, each with its own PEFT LoRA. Every domain copy runs on every input (full LM, logits over all
    positions, as the paper's code does), then a one-hot route masks the outputs. Aggregation is the
    paper's default: concat[h_inv ; h_dom] → BatchNorm → new Linear(2H → V). MI is applied to every
    domain module (the paper's choice), with this project's C×C estimator.
    """

    def __init__(self, base: LlamaForCausalLM, num_domains: int, router_dim: int = 64):
        super().__init__()
        hidden, vocab = base.config.hidden_size, base.config.vocab_size
        self.num_domains = num_domains
        self.router_lm = base.requires_grad_(False)
        self.invariant = get_peft_model(copy.deepcopy(base), lora_config())
        self.domains = nn.ModuleList(get_peft_model(copy.deepcopy(base), lora_config()) for _ in range(num_domains))
        self.router = VectorQuantizedRouter(hidden, router_dim, num_domains, 0.25, "hard", 1.0, "input")
        self.norm = nn.BatchNorm1d(2 * hidden)
        self.head = nn.Linear(2 * hidden, vocab)

    def forward(self, input_ids, attention_mask, labels, domain_ids=None) -> IclmCausalLMOutput:
        with torch.no_grad():  # the paper's router also sees the answer tokens (DESIGN.md §2)
            router_states = self.router_lm(input_ids=input_ids, attention_mask=attention_mask,
                                           output_hidden_states=True).hidden_states[-1]
        routing = self.router(router_states, attention_mask, domain_ids)

        def run(lm):
            out = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return out.hidden_states[-1], out.logits

        h_inv, logits_inv = run(self.invariant)
        domain_outs = [run(lm) for lm in self.domains]  # every domain module on every input
        one_hot = F.one_hot(routing.routes, self.num_domains).to(h_inv.dtype)[:, :, None, None]
        h_dom = sum(one_hot[:, k] * h for k, (h, _) in enumerate(domain_outs))
        logits_dom = sum(one_hot[:, k] * logits for k, (_, logits) in enumerate(domain_outs))

        mixed = torch.cat([h_inv, h_dom], dim=-1)
        logits = self.head(self.norm(mixed.reshape(-1, mixed.shape[-1])).reshape(mixed.shape))

        targets = labels[:, 1:]
        answer = targets != -100

        def ce(x):
            return F.cross_entropy(x[:, :-1][answer], targets[answer])

        a_inv = h_inv[:, :-1][answer]
        mi = sum(mutual_information(a_inv, h[:, :-1][answer]) for h, _ in domain_outs)
        return IclmCausalLMOutput(loss=ce(logits), logits=logits, commitment_loss=routing.commitment_loss, mi_loss=mi,
                                  invariant_loss=ce(logits_inv), domain_loss=ce(logits_dom), routes=routing.routes)


class Variant(NamedTuple):
    label: str
    design: str  # "lora", "iclm" or "paper"
    num_domains: int = 0
    oracle: bool = False  # routes given as domain_ids (spread over all domains) instead of the router's


VARIANTS = {
    "lora": Variant("single PEFT LoRA", "lora"),
    "iclm2-router": Variant("ICLM N=2, router", "iclm", 2),
    "iclm2-oracle": Variant("ICLM N=2, oracle", "iclm", 2, oracle=True),
    "iclm4-router": Variant("ICLM N=4, router", "iclm", 4),
    "iclm4-oracle": Variant("ICLM N=4, oracle", "iclm", 4, oracle=True),
    # Routes cannot change the paper design's cost (every domain copy runs anyway): oracle routes.
    "paper2": Variant("paper design N=2", "paper", 2, oracle=True),
    "paper4": Variant("paper design N=4", "paper", 4, oracle=True),
}
GENERATION = {
    "gen-lora": Variant("single PEFT LoRA", "lora"),
    "gen-iclm2": Variant("ICLM N=2, router", "iclm", 2),
    "gen-iclm4": Variant("ICLM N=4, router", "iclm", 4),
}


def build_model(variant: Variant, args, batch: dict) -> tuple[nn.Module, torch.Tensor | None]:
    """The variant's model on a fresh base, and the oracle routes to pass as domain_ids (None: the router routes)."""
    base = build_base(args)
    if variant.design == "lora":
        return get_peft_model(base, lora_config()), None
    oracle = spread_domains(args.batch, variant.num_domains) if variant.oracle else None
    if variant.design == "paper":
        return PaperStyleIclm(base, variant.num_domains), oracle
    model = IclmForCausalLM.from_base(base, num_domains=variant.num_domains)
    if oracle is None:
        spread_codebook(model, batch)
    return model, oracle


def training_setup(variant: Variant, args):
    """(model, one training step: zero_grad + forward with labels + backward + AdamW step, routes per row)."""
    batch = make_batch(args, args.seq)
    model, oracle = build_model(variant, args, batch)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def loss():
        if variant.design == "lora":
            return model(**batch).loss
        if variant.design == "paper":
            return total_loss(model(**batch, domain_ids=oracle))
        # As IclmTrainer.compute_loss calls it: the losses need no full-sequence logits; loss is the whole objective.
        return model(**batch, domain_ids=oracle, logits_to_keep=1).loss

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    routes = oracle
    if variant.design == "iclm" and oracle is None:
        routes = model.route(batch["input_ids"], batch["attention_mask"], batch["labels"]).routes
    return model, step, routes


def generation_setup(variant: Variant, args):
    """(model, one greedy generate() call with the KV cache, None). ICLM routes once, from the prompt."""
    batch = make_batch(args, args.prompt, labelled=False)
    model, _ = build_model(variant, args, batch)
    model.eval()

    @torch.no_grad()
    def step():
        out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        if out.shape[1] != args.prompt + args.new_tokens:
            raise RuntimeError(f"generate() stopped after {out.shape[1] - args.prompt} tokens: timings would not compare.")

    return model, step, None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, each tensor once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


# ------------------------------------------------------------------------------------------- measurement
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _serve(variant: Variant, setup, args, connection) -> None:
    """Child process: build the variant, then run one timed step per "step" message until "finish"."""
    try:
        torch.set_num_threads(args.threads)
        start_mb = _rss_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # Linux ≥ 4.0: reset the peak RSS (VmHWM) to the current RSS
        model, step, routes = setup(variant, args)
        total, trainable = count_parameters(model)
        connection.send({"params": total, "trainable": trainable, "model_mb": _rss_mb("VmRSS") - start_mb,
                         "routes": None if routes is None else torch.bincount(routes, minlength=variant.num_domains).tolist()})
        while connection.recv() == "step":
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            connection.send((time.perf_counter() - wall, time.process_time() - cpu))
        connection.send({"peak_mb": _rss_mb("VmHWM") - start_mb})
    except BaseException:  # noqa: BLE001 — hand the child's traceback to the parent
        connection.send({"error": traceback.format_exc()})
    finally:
        connection.close()


class Worker:
    """One variant in its own forked process (see the module docstring), stepping when told to."""

    def __init__(self, name: str, variant: Variant, setup, args):
        self.name = name
        context = multiprocessing.get_context("fork")
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(variant, setup, args, child_end), daemon=True)
        self.process.start()
        child_end.close()
        self.info = self._receive()  # returns once the model is built

    def _receive(self):
        try:
            message = self.connection.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(f"{self.name}: the measuring process died (exit code {self.process.exitcode}); "
                               "out of memory?") from None
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(f"{self.name} failed in its measuring process:\n{message['error']}")
        return message

    def step(self) -> tuple[float, float]:
        """One step: (wall seconds, CPU seconds)."""
        self.connection.send("step")
        return self._receive()

    def finish(self) -> dict:
        self.connection.send("finish")
        result = self._receive()
        self.process.join()
        return {**self.info, **result}


def measure(catalogue: dict, setup, args, warmup: int, repeats: int) -> dict:
    """Build every variant in its own process, then time them round-robin, rotating the order each round.

    Interleaving makes a slow spell of the machine (another job starting) hit every variant alike
    instead of whichever one happened to be running then.
    """
    workers = []
    for name, variant in catalogue.items():
        print(f"building {name} …", file=sys.stderr, flush=True)
        workers.append(Worker(name, variant, setup, args))
    times = {worker.name: ([], []) for worker in workers}
    for round_ in range(warmup + repeats):
        print(f"round {round_ + 1}/{warmup + repeats}{' (warm-up)' if round_ < warmup else ''}", file=sys.stderr, flush=True)
        shift = round_ % len(workers)
        for worker in workers[shift:] + workers[:shift]:
            wall, cpu = worker.step()
            if round_ >= warmup:
                times[worker.name][0].append(wall)
                times[worker.name][1].append(cpu)
    results = {}
    for worker in workers:
        wall, cpu = times[worker.name]
        results[worker.name] = {**worker.finish(), "times": wall, "cpu_times": cpu, "median_s": statistics.median(wall),
                                "min_s": min(wall), "cpu_s": statistics.median(cpu)}
    return results


def profile(name: str, args) -> None:
    """Print torch.profiler's operator table over ``--steps`` training steps of one variant (in-process)."""
    torch.set_num_threads(args.threads)
    _, step, _ = training_setup(VARIANTS[name], args)
    for _ in range(args.warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


# ------------------------------------------------------------------------------------------------ report
def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _load_line(when: str, args) -> str:
    load = os.getloadavg()[0]
    return (f"load average {when}: {load:.1f} on {os.cpu_count()} cores"
            + (" — other jobs were running: trust the CPU-time ratios more than wall-clock seconds"
               if load > args.threads + 0.5 else ""))


def _add_ratios(results: dict, reference: dict) -> None:
    for r in results.values():
        r["ratio_vs_lora"] = _ratio(r["median_s"], reference["median_s"])
        r["cpu_ratio_vs_lora"] = _ratio(r["cpu_s"], reference["cpu_s"])
        r["peak_ratio_vs_lora"] = _ratio(r["peak_mb"], reference["peak_mb"])


def report(training: dict, generation: dict, args, loads: list[str]) -> dict:
    """Print the tables and PASS/FAIL lines; return the summary that --json writes."""
    lora = training["lora"]
    base_params = lora["params"] - lora["trainable"]  # PEFT adds only the LoRA weights
    _add_ratios(training, lora)
    _add_ratios(generation, generation["gen-lora"])
    print(f"\nTraining step: batch {args.batch} × seq {args.seq}, last {args.answer} tokens labelled, LoRA r={LORA['r']} "
          f"on q/k/v/o, forward + backward + AdamW;\n{args.steps} timed steps after {args.warmup} warm-up, variants "
          f"interleaved, {args.threads} thread(s). Base: {base_params:,} params (Llama, vocab {args.vocab}, "
          f"hidden {args.hidden}, MLP {args.intermediate}, {args.layers} layers)")
    header = (f"{'variant':<19}{'params':>12}{'+%base':>8}{'total/base':>11}{'trainable':>11}{'median s':>9}"
              f"{'min s':>7}{'×LoRA':>7}{'cpu s':>7}{'×LoRA':>7}{'model MB':>9}{'peak MB':>8}{'×LoRA':>7}  routes")
    print(header + "\n" + "-" * len(header))
    for name, variant in VARIANTS.items():
        r = training[name]
        r["params_beyond_base_pct"] = 100 * (r["params"] - base_params) / base_params
        print(f"{variant.label:<19}{r['params']:>12,}{r['params_beyond_base_pct']:>7.1f}%{r['params'] / base_params:>10.2f}×"
              f"{r['trainable']:>11,}{r['median_s']:>9.3f}{r['min_s']:>7.3f}{r['ratio_vs_lora']:>6.2f}×"
              f"{r['cpu_s']:>7.3f}{r['cpu_ratio_vs_lora']:>6.2f}×{r['model_mb']:>9.0f}{r['peak_mb']:>8.0f}"
              f"{r['peak_ratio_vs_lora']:>6.2f}×  {r['routes'] or ''}")
    print("params: every tensor counted once (the paper design's copies count). median/min s: wall clock; cpu s: median "
          "process CPU time.\nmodel MB: RSS growth from building the model; peak MB: peak RSS growth over building + "
          "all steps, each variant in its own process. routes: rows per domain module.")

    print(f"\nGeneration: batch {args.batch}, prompt {args.prompt}, greedy generate(max_new_tokens={args.new_tokens}) "
          f"with the KV cache; {args.gen_repeats} timed calls after 1 warm-up, interleaved")
    header = f"{'variant':<19}{'median s':>9}{'min s':>7}{'×LoRA':>7}{'cpu s':>7}{'×LoRA':>7}{'ms/token':>10}{'peak MB':>8}"
    print(header + "\n" + "-" * len(header))
    for name, variant in GENERATION.items():
        r = generation[name]
        print(f"{variant.label:<19}{r['median_s']:>9.3f}{r['min_s']:>7.3f}{r['ratio_vs_lora']:>6.2f}×{r['cpu_s']:>7.3f}"
              f"{r['cpu_ratio_vs_lora']:>6.2f}×{1000 * r['median_s'] / args.new_tokens:>10.1f}{r['peak_mb']:>8.0f}")
    print("ms/token: the whole generate() call (prefill included) per new token, wall clock")

    def worse(n, key):  # targets use the worse of the router-routed and oracle runs
        return max(training[f"iclm{n}-router"][key], training[f"iclm{n}-oracle"][key])

    paper2, paper4 = training["paper2"], training["paper4"]
    checks = [
        ("ICLM N=2 parameters beyond the base", training["iclm2-router"]["params_beyond_base_pct"], "%", TARGET_PARAMS_PCT,
         f"paper design: {paper2['params_beyond_base_pct']:.0f}% beyond, {paper2['params'] / base_params:.0%} in total"),
        ("ICLM N=2 step time / LoRA", _ratio(worse(2, "median_s"), lora["median_s"]), "×", TARGET_STEP_RATIO,
         f"CPU time {_ratio(worse(2, 'cpu_s'), lora['cpu_s']):.2f}×; paper design {paper2['ratio_vs_lora']:.2f}×, "
         f"CPU {paper2['cpu_ratio_vs_lora']:.2f}×"),
        ("ICLM step time N=4 / N=2", _ratio(worse(4, "median_s"), worse(2, "median_s")), "×", TARGET_SCALING,
         f"CPU time {_ratio(worse(4, 'cpu_s'), worse(2, 'cpu_s')):.2f}×; paper design "
         f"{_ratio(paper4['median_s'], paper2['median_s']):.2f}× ({paper4['ratio_vs_lora']:.2f}× / "
         f"{paper2['ratio_vs_lora']:.2f}× LoRA), CPU {_ratio(paper4['cpu_s'], paper2['cpu_s']):.2f}×"),
    ]
    print("\nTargets (median wall clock; ICLM: the worse of router-routed and oracle)")
    for what, value, unit, target, reference in checks:
        shown = f"{value:.1f}%" if unit == "%" else f"{value:.2f}×"
        print(f"{'PASS' if value <= target else 'FAIL'}  {what}: {shown} (target ≤ {target}{unit}; {reference})")
    for line in loads:
        print(line)
    return {
        "sizes": {k: getattr(args, k) for k in ("vocab", "hidden", "intermediate", "layers", "heads", "batch", "seq",
                                                 "answer", "steps", "warmup", "prompt", "new_tokens", "gen_repeats",
                                                 "threads")},
        "base_params": base_params,
        "torch": torch.__version__,
        "load": loads,
        "training": training,
        "generation": generation,
        "targets": {what: {"value": value, "target": target, "pass": value <= target}
                    for what, value, _, target, _ in checks},
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_argument_group("sizes (defaults: a ≈4.2M-parameter Llama, as in DESIGN.md §2)")
    size.add_argument("--vocab", type=int, default=2048)
    size.add_argument("--hidden", type=int, default=256)
    size.add_argument("--intermediate", type=int, default=None, help="MLP width; default 8/3·hidden rounded to 16")
    size.add_argument("--layers", type=int, default=4)
    size.add_argument("--heads", type=int, default=4)
    size.add_argument("--batch", type=int, default=8)
    size.add_argument("--seq", type=int, default=256)
    size.add_argument("--answer", type=int, default=4, help="labelled (answer) tokens at the end of each row")
    size.add_argument("--prompt", type=int, default=128, help="generation prompt length")
    size.add_argument("--new-tokens", type=int, default=32, help="generation: max_new_tokens")
    run = parser.add_argument_group("measurement")
    run.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    run.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    run.add_argument("--gen-repeats", type=int, default=3, help="timed generate() calls")
    run.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every measurement (see above)")
    run.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps: a smoke test, not a measurement")
    run.add_argument("--json", metavar="PATH", help="write all numbers here")
    run.add_argument("--profile", choices=sorted(VARIANTS), help="profile one variant's training step and exit")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.intermediate is None:
        args.intermediate = -(-8 * args.hidden // 3 // 16) * 16
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile:
        profile(args.profile, args)
        return 0
    loads = [_load_line("at start", args)]
    training = measure(VARIANTS, training_setup, args, args.warmup, args.steps)
    generation = measure(GENERATION, generation_setup, args, 1, args.gen_repeats)
    loads.append(_load_line("at end", args))
    summary = report(training, generation, args, loads)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
        print(f"\nwrote {args.json}")
    return 0  # a benchmark: FAIL lines are findings, not errors


if __name__ == "__main__":
    sys.exit(main())
