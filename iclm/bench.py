"""``iclm bench``: what an ICLM costs next to one PEFT LoRA model, measured in one run on one machine.

Why: the paper's public code keeps N+2 full copies of the base and runs every domain copy on every input
(DESIGN.md §2). ICLM runs one frozen base over 2B rows; a shared trunk (``adapter_layers``) runs only the
top K layers twice; cached routes skip the router's base pass. Every number here is a ratio against a
baseline measured in the same run (a single LoRA model with the same rank and targets on every layer).

Each variant is built and measured in its own child process (forked on CPU, spawned on CUDA) after the
parent imported torch, transformers and peft but before it ran a tensor op, so allocator state left by one
variant cannot help or hurt the next, and each child's peak memory is its own: on CPU the peak RSS growth
(``/proc/self/clear_refs`` then ``VmHWM``, since torch's tensors bypass tracemalloc), on CUDA
``torch.cuda.max_memory_allocated``. Variants are timed round-robin in a rotating order (a slow spell hits
all alike), wall clock and process CPU time; torch runs one thread by default, since on a shared machine
OpenMP threads waiting for a descheduled sibling made steps take up to 20× longer while one thread's CPU
time repeats within ~1 %. The last line printed is one JSON object with every ratio.

    iclm bench                              # default sizes (≈4.2M-parameter Llama, batch 8 × 256), ≈6 min on 2 cores
    iclm bench --quick                      # smoke test
    iclm bench --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --heads 16 --vocab 32000
    iclm bench --profile iclm               # torch.profiler's top operators of one variant's step
    iclm bench --compile                    # also torch.compile'd LoRA and ICLM: compiled vs eager in the same run

With ``--compile``, LoRA and ICLM are also measured under ``torch.compile`` (Inductor, default mode): the training
step with the model compiled, and generation with a static cache and compiled decoding steps (transformers'
``compile_config``); each compiled variant compiles in its own process before timing (its first steps, reported as
``compile s``), and the JSON line gains compiled-vs-eager ratios for both and compiled ICLM vs compiled LoRA.
"""

from __future__ import annotations

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

from modeling_iclm import IclmCausalLMOutput, IclmForCausalLM  # noqa: E402
from mutual_information_iclm import mutual_information  # noqa: E402
from router_iclm import VectorQuantizedRouter  # noqa: E402

# Paper config (DESIGN.md §1): loss weights of VQ, MI, invariant-alone CE, domain-alone CE; LoRA r/α/dropout.
LOSS_WEIGHTS = {"commitment_loss": 0.1, "mi_loss": 0.01, "invariant_loss": 0.1, "domain_loss": 0.1}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LEARNING_RATE = 5e-4
QUICK = {"vocab": 128, "hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "batch": 4, "seq": 32,
         "answer": 2, "steps": 2, "warmup": 1, "prompt": 16, "new_tokens": 4, "gen_repeats": 1,
         "mi_rows": 16384}  # n×C×C = 64 MB: well above the RSS noise of a child process
# Targets of the design, checked as PASS/FAIL lines (a benchmark: findings, not errors).
TARGETS = {"train_step_ratio_n2": 2.2, "train_step_ratio_n2_cached_routes": 2.0, "train_step_ratio_n8_vs_n2": 1.1,
           "train_step_ratio_shared_trunk": 1.6, "extra_param_ratio": 0.15, "peak_memory_ratio_shared_trunk": 1.5}
TARGETS_AT_LEAST = {"generate_tps_ratio_shared_trunk": 0.6}


class Variant(NamedTuple):
    label: str
    design: str  # "lora", "iclm" or "paper"
    num_domains: int = 0
    oracle: bool = False  # routes given as domain_ids (spread over all domains) instead of the router's
    trunk: bool = False  # adapters on the top K layers only (shared trunk)
    cached: bool = False  # router states cached (filled before timing)
    checkpointing: bool = False
    dtype: str | None = None  # the base's dtype for this variant (default: --dtype)
    quantized: bool = False  # torchao int8 weight-only base
    compiled: bool = False  # torch.compile (training: the model; generation: static cache, compiled decoding steps)
    static: bool = False  # generation with cache_implementation="static"


def training_variants(args) -> dict[str, Variant]:
    n = args.num_domains
    variants = {
        "lora": Variant("single PEFT LoRA", "lora"),
        "iclm": Variant(f"ICLM N={n}", "iclm", n),
        "iclm-cached": Variant(f"ICLM N={n}, cached routes", "iclm", n, cached=True),
        "iclm-n8": Variant("ICLM N=8", "iclm", 8),
        "trunk": Variant(f"ICLM N={n}, trunk K={args.adapter_layers}", "iclm", n, trunk=True),
        "iclm-oracle": Variant(f"ICLM N={n}, oracle", "iclm", n, oracle=True),
    }
    if args.memory_options:
        variants.update({
            "lora-ckpt": Variant("LoRA + checkpointing", "lora", checkpointing=True),
            "iclm-ckpt": Variant(f"ICLM N={n} + checkpointing", "iclm", n, checkpointing=True),
            "trunk-ckpt": Variant("trunk + checkpointing", "iclm", n, trunk=True, checkpointing=True),
        })
        if args.dtype != "bfloat16":
            variants.update({
                "lora-bf16": Variant("LoRA, bf16 base", "lora", dtype="bfloat16"),
                "iclm-bf16": Variant(f"ICLM N={n}, bf16 base", "iclm", n, dtype="bfloat16"),
                "trunk-bf16": Variant("trunk, bf16 base", "iclm", n, trunk=True, dtype="bfloat16"),
            })
        if _torchao_available():
            variants.update({
                "lora-int8": Variant("LoRA, int8 base", "lora", quantized=True),
                "iclm-int8": Variant(f"ICLM N={n}, int8 base", "iclm", n, quantized=True),
                "trunk-int8": Variant("trunk, int8 base", "iclm", n, trunk=True, quantized=True),
            })
    if args.compile:
        variants.update({"lora-compiled": Variant("LoRA, torch.compile", "lora", compiled=True),
                         "iclm-compiled": Variant(f"ICLM N={n}, torch.compile", "iclm", n, compiled=True)})
    if args.paper:
        variants.update({"paper2": Variant("paper design N=2", "paper", 2, oracle=True),
                         "paper4": Variant("paper design N=4", "paper", 4, oracle=True)})
    return variants


def generation_variants(args) -> dict[str, Variant]:
    n = args.num_domains
    variants = {"gen-lora": Variant("single PEFT LoRA", "lora"), "gen-iclm": Variant(f"ICLM N={n}", "iclm", n),
                "gen-trunk": Variant(f"ICLM N={n}, trunk K={args.adapter_layers}", "iclm", n, trunk=True)}
    if args.compile:
        variants.update({"gen-lora-static": Variant("LoRA, static cache", "lora", static=True),
                         "gen-iclm-static": Variant(f"ICLM N={n}, static cache", "iclm", n, static=True),
                         "gen-lora-compiled": Variant("LoRA, static, compiled", "lora", static=True, compiled=True),
                         "gen-iclm-compiled": Variant(f"ICLM N={n}, static, compiled", "iclm", n, static=True,
                                                      compiled=True)})
    return variants


def _torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


# ------------------------------------------------------------------------------------------------ inputs
def lora_config() -> LoraConfig:
    """A fresh config per model: get_peft_model records per-model state in it."""
    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def build_base(args, variant: Variant | None = None) -> LlamaForCausalLM:
    """The same randomly initialised Llama in every child (fixed seed); no eos, so generation never stops early."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, args.prompt + args.new_tokens), tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    base = LlamaForCausalLM(config)
    dtype = getattr(torch, (variant.dtype if variant and variant.dtype else args.dtype))
    if variant is not None and variant.quantized:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(base, Int8WeightOnlyConfig(), filter_fn=lambda m, name: isinstance(m, nn.Linear)
                  and not name.endswith("lm_head"))
    return base.to(device=args.device, dtype=dtype) if not (variant and variant.quantized) else base.to(args.device)


def make_batch(args, length: int, labelled: bool = True) -> dict:
    """Random tokens; answer-only labels: only the last ``args.answer`` tokens are labelled, as in the paper."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, args.vocab, (args.batch, length), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if labelled:
        labels = input_ids.clone()
        labels[:, :-args.answer] = -100
        batch["labels"] = labels
    return {k: v.to(args.device) for k, v in batch.items()}


def spread_domains(batch_size: int, num_domains: int, device) -> torch.Tensor:
    """Oracle routes covering every domain: row i → domain i mod N."""
    return (torch.arange(batch_size) % num_domains).to(device)


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
    groups = spread_domains(embeddings.shape[0], n, embeddings.device)
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


def build_model(variant: Variant, args, batch: dict) -> tuple[nn.Module, torch.Tensor | None]:
    """The variant's model on a fresh base, and the oracle routes to pass as domain_ids (None: the router routes)."""
    base = build_base(args, variant)
    if variant.design == "lora":
        model = get_peft_model(base, lora_config())
        oracle = None
    else:
        oracle = spread_domains(args.batch, variant.num_domains, args.device) if variant.oracle else None
        if variant.design == "paper":
            return PaperStyleIclm(base, variant.num_domains).to(args.device), oracle
        model = IclmForCausalLM.from_base(base, num_domains=variant.num_domains,
                                          adapter_layers=args.adapter_layers if variant.trunk else None)
        if oracle is None:
            spread_codebook(model, batch)
        if variant.cached:
            model.cache_router_states(True)
            model.route(batch["input_ids"], batch["attention_mask"], batch.get("labels"))  # as IclmTrainer's k-means pass
    if variant.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if variant.design == "lora":
            model.enable_input_require_grads()
    return model, oracle


def training_setup(variant: Variant, args):
    """(model, one training step: zero_grad + forward with labels + backward + AdamW step, routes per row)."""
    batch = make_batch(args, args.seq)
    model, oracle = build_model(variant, args, batch)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    forward = torch.compile(model) if variant.compiled else model

    def loss():
        if variant.design == "lora":
            return forward(**batch).loss
        if variant.design == "paper":
            return total_loss(forward(**batch, domain_ids=oracle))
        # As IclmTrainer.compute_loss calls it: the losses need no full-sequence logits; loss is the whole objective.
        return forward(**batch, domain_ids=oracle, logits_to_keep=1).loss

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    routes = oracle
    if variant.design == "iclm" and oracle is None:
        routes = model.route(batch["input_ids"], batch["attention_mask"], batch["labels"]).routes
    if variant.compiled:
        _compile_now(model, step)
    return model, step, routes


def _compile_now(model: nn.Module, step) -> None:
    """Run a compiled variant's first steps while it is built: compilation (and the one recompilation a second call
    can bring) is reported as ``compile_s``, never timed as a step."""
    start = time.perf_counter()
    for _ in range(2):
        step()
    model.compile_seconds = time.perf_counter() - start


def generation_setup(variant: Variant, args):
    """(model, one greedy generate() call with the KV cache, None). ICLM routes once, from the prompt."""
    batch = make_batch(args, args.prompt, labelled=False)
    model, _ = build_model(variant, args, batch)
    model.eval()
    options = {}
    if variant.static:
        options["cache_implementation"] = "static"
    if variant.compiled:  # transformers compiles decoding steps by itself on accelerators only, unless told
        from transformers import CompileConfig

        options["compile_config"] = CompileConfig(mode="default" if args.device == "cpu" else "reduce-overhead")
        options["compile_config"]._compile_all_devices = True

    @torch.no_grad()
    def step():
        out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                             **options)
        if out.shape[1] != args.prompt + args.new_tokens:
            raise RuntimeError(f"generate() stopped after {out.shape[1] - args.prompt} tokens: timings would not compare.")

    if variant.compiled:
        _compile_now(model, step)
    return model, step, None


def mi_setup(variant: Variant, args):
    """The MI estimator over n = mi_rows positions of hidden size C, with gradients: this project's C×C form
    ("iclm") or the paper code's n×C×C joint ("paper")."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.mi_rows, args.hidden, generator=generator).to(args.device).requires_grad_()
    y = torch.randn(args.mi_rows, args.hidden, generator=generator).to(args.device).requires_grad_()

    def paper_form(a, b):
        p, q = torch.softmax(a, -1), torch.softmax(b, -1)
        joint = torch.einsum("nc,nd->ncd", p, q).mean(0)  # the n×C×C tensor the paper's code builds
        product = p.mean(0)[:, None] * q.mean(0)[None, :]
        return (joint * (joint.clamp_min(1e-38).log() - product.clamp_min(1e-38).log())).sum()

    estimator = mutual_information if variant.design == "iclm" else paper_form

    def step():
        estimator(x, y).backward()

    return nn.Linear(1, 1), step, None


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
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            start_mb = _rss_mb("VmRSS")
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # Linux ≥ 4.0: reset the peak RSS (VmHWM) to the current RSS
        model, step, routes = setup(variant, args)
        total, trainable = count_parameters(model)
        built_mb = (torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb("VmRSS")) - start_mb
        connection.send({"params": total, "trainable": trainable, "model_mb": built_mb,
                         "compile_s": getattr(model, "compile_seconds", None),
                         "routes": None if routes is None else torch.bincount(routes.cpu(), minlength=variant.num_domains).tolist()})
        while connection.recv() == "step":
            if cuda:
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            if cuda:
                torch.cuda.synchronize()
            connection.send((time.perf_counter() - wall, time.process_time() - cpu))
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb("VmHWM")
        connection.send({"peak_mb": peak - start_mb})
    except BaseException:  # noqa: BLE001 — hand the child's traceback to the parent
        connection.send({"error": traceback.format_exc()})
    finally:
        connection.close()


class Worker:
    """One variant in its own process (see the module docstring), stepping when told to."""

    def __init__(self, name: str, variant: Variant, setup, args):
        self.name = name
        context = multiprocessing.get_context("spawn" if args.device.startswith("cuda") else "fork")
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
    """Build every variant in its own process, then time them round-robin, rotating the order each round."""
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
    _, step, _ = training_setup(training_variants(args)[name], args)
    for _ in range(args.warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# ------------------------------------------------------------------------------------------------ report
def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _load_line(when: str, args) -> str:
    load = os.getloadavg()[0]
    return (f"load average {when}: {load:.1f} on {os.cpu_count()} cores"
            + (" — other jobs were running: trust the CPU-time ratios more than wall-clock seconds"
               if load > args.threads + 0.5 else ""))


def _print_table(results: dict, catalogue: dict, reference: dict, base_params: int, title: str, per_token=None):
    print(title)
    header = (f"{'variant':<27}{'params':>12}{'+%base':>8}{'median s':>9}{'min s':>7}{'×LoRA':>7}{'cpu s':>7}"
              f"{'×LoRA':>7}{'peak MB':>8}{'×LoRA':>7}" + (f"{'ms/token':>10}" if per_token else "  routes"))
    print(header + "\n" + "-" * len(header))
    for name, variant in catalogue.items():
        r = results[name]
        r["ratio_vs_lora"] = _ratio(r["median_s"], reference["median_s"])
        r["cpu_ratio_vs_lora"] = _ratio(r["cpu_s"], reference["cpu_s"])
        r["peak_ratio_vs_lora"] = _ratio(r["peak_mb"], reference["peak_mb"])
        r["params_beyond_base_pct"] = 100 * (r["params"] - base_params) / base_params
        tail = f"{1000 * r['median_s'] / per_token:>10.1f}" if per_token else f"  {r['routes'] or ''}"
        print(f"{variant.label:<27}{r['params']:>12,}{r['params_beyond_base_pct']:>7.1f}%{r['median_s']:>9.3f}"
              f"{r['min_s']:>7.3f}{r['ratio_vs_lora']:>6.2f}×{r['cpu_s']:>7.3f}{r['cpu_ratio_vs_lora']:>6.2f}×"
              f"{r['peak_mb']:>8.0f}{r['peak_ratio_vs_lora']:>6.2f}×" + tail)


def report(training: dict, generation: dict, mi: dict, args, loads: list[str]) -> dict:
    """Print the tables and PASS/FAIL lines; return the summary (the JSON line's ratios included)."""
    lora = training["lora"]
    base_params = lora["params"] - lora["trainable"]  # PEFT adds only the LoRA weights
    memory = "peak RSS growth" if args.device == "cpu" else "peak CUDA memory allocated"
    _print_table(training, training_variants(args), lora, base_params,
                 f"\nTraining step on {args.device} ({args.dtype}): batch {args.batch} × seq {args.seq}, last "
                 f"{args.answer} tokens labelled, LoRA r={LORA['r']} on q/k/v/o, forward + backward + AdamW; "
                 f"{args.steps} timed steps after {args.warmup} warm-up, interleaved, {args.threads} thread(s).\nBase: "
                 f"{base_params:,} params (Llama, vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers). "
                 f"Peak MB: {memory} of each variant's process over building and all steps.")
    _print_table(generation, generation_variants(args), generation["gen-lora"], base_params,
                 f"\nGeneration: batch {args.batch}, prompt {args.prompt}, greedy generate(max_new_tokens="
                 f"{args.new_tokens}) with the KV cache; {args.gen_repeats} timed calls after 1 warm-up",
                 per_token=args.new_tokens)
    print(f"\nMI estimator, forward + backward over n = {args.mi_rows} positions, C = {args.hidden}: peak MB "
          f"C×C form {mi['iclm']['peak_mb']:.1f}, the paper code's n×C×C form {mi['paper']['peak_mb']:.1f}")

    def r(name, key="median_s", results=training, reference="lora"):
        return _ratio(results[name][key], results[reference][key])

    summary = {
        "train_step_ratio_n2": r("iclm"), "train_step_ratio_n2_cpu": r("iclm", "cpu_s"),
        "train_step_ratio_n2_oracle": r("iclm-oracle"),
        "train_step_ratio_n2_cached_routes": r("iclm-cached"), "train_step_ratio_n2_cached_routes_cpu": r("iclm-cached", "cpu_s"),
        "train_step_ratio_n8_vs_n2": r("iclm-n8", reference="iclm"),
        "train_step_ratio_shared_trunk": r("trunk"), "train_step_ratio_shared_trunk_cpu": r("trunk", "cpu_s"),
        "extra_param_ratio": (training["iclm"]["params"] - base_params) / base_params,
        "extra_param_ratio_shared_trunk": (training["trunk"]["params"] - base_params) / base_params,
        "generate_tps_ratio": _ratio(generation["gen-lora"]["median_s"], generation["gen-iclm"]["median_s"]),
        "generate_tps_ratio_shared_trunk": _ratio(generation["gen-lora"]["median_s"], generation["gen-trunk"]["median_s"]),
        "peak_memory_ratio": r("iclm", "peak_mb"), "peak_memory_ratio_shared_trunk": r("trunk", "peak_mb"),
        "mi_memory_ratio": _ratio(mi["iclm"]["peak_mb"], mi["paper"]["peak_mb"]),
    }
    for option in ("ckpt", "bf16", "int8"):  # each memory option against LoRA with the same option
        if f"iclm-{option}" in training:
            summary[f"peak_memory_ratio_{option}"] = r(f"iclm-{option}", "peak_mb", reference=f"lora-{option}")
            summary[f"peak_memory_ratio_shared_trunk_{option}"] = r(f"trunk-{option}", "peak_mb", reference=f"lora-{option}")
            summary[f"train_step_ratio_n2_{option}"] = r(f"iclm-{option}", reference=f"lora-{option}")
            summary[f"train_step_ratio_shared_trunk_{option}"] = r(f"trunk-{option}", reference=f"lora-{option}")
    if "iclm-compiled" in training:
        summary.update(_compile_summary(training, generation, r))
    if "paper2" in training:
        summary["train_step_ratio_paper2"] = r("paper2")
        summary["train_step_ratio_paper4"] = r("paper4")
    print("\nTargets (median wall clock against the LoRA baseline of this run)")
    for key, target in {**TARGETS, **TARGETS_AT_LEAST}.items():
        value = summary[key]
        passed = value >= target if key in TARGETS_AT_LEAST else value <= target
        print(f"{'PASS' if passed else 'FAIL'}  {key} = {value:.3f} (target {'≥' if key in TARGETS_AT_LEAST else '≤'} "
              f"{target})")
    for line in loads:
        print(line)
    return {
        "sizes": {k: getattr(args, k) for k in ("vocab", "hidden", "intermediate", "layers", "heads", "batch", "seq",
                                                 "answer", "steps", "warmup", "prompt", "new_tokens", "gen_repeats",
                                                 "threads", "num_domains", "adapter_layers", "device", "dtype")},
        "base_params": base_params, "torch": torch.__version__, "load": loads,
        "training": training, "generation": generation, "mi": mi, "ratios": summary,
    }


def _compile_summary(training: dict, generation: dict, r) -> dict:
    """Compiled against eager, for LoRA and ICLM in the same run, printed and returned as ratios: training step time
    (compiled / eager: below 1 is faster) and generation tokens/s (compiled decoding with a static cache / eager with
    the default dynamic cache: above 1 is faster); compiled ICLM against compiled LoRA."""
    def tps(name, reference):
        return _ratio(generation[reference]["median_s"], generation[name]["median_s"])

    ratios = {
        "train_step_ratio_lora_compiled_vs_eager": r("lora-compiled"),
        "train_step_ratio_lora_compiled_vs_eager_cpu": r("lora-compiled", "cpu_s"),
        "train_step_ratio_iclm_compiled_vs_eager": r("iclm-compiled", reference="iclm"),
        "train_step_ratio_iclm_compiled_vs_eager_cpu": r("iclm-compiled", "cpu_s", reference="iclm"),
        "train_step_ratio_n2_compiled": r("iclm-compiled", reference="lora-compiled"),
        "generate_tps_ratio_lora_compiled_vs_eager": tps("gen-lora-compiled", "gen-lora"),
        "generate_tps_ratio_iclm_compiled_vs_eager": tps("gen-iclm-compiled", "gen-iclm"),
        "generate_tps_ratio_static": tps("gen-iclm-static", "gen-lora-static"),
        "generate_tps_ratio_compiled": tps("gen-iclm-compiled", "gen-lora-compiled"),
    }
    print("\ntorch.compile (Inductor, default mode) against eager, in this run (compile time: the first two steps, "
          "untimed)")
    print(f"  training step, compiled / eager: LoRA {ratios['train_step_ratio_lora_compiled_vs_eager']:.2f}× "
          f"(compile {training['lora-compiled']['compile_s']:.0f} s), ICLM "
          f"{ratios['train_step_ratio_iclm_compiled_vs_eager']:.2f}× (compile "
          f"{training['iclm-compiled']['compile_s']:.0f} s); compiled ICLM = "
          f"{ratios['train_step_ratio_n2_compiled']:.2f}× compiled LoRA")
    print(f"  generation tokens/s, compiled static-cache decoding / eager: LoRA "
          f"{ratios['generate_tps_ratio_lora_compiled_vs_eager']:.2f}×, ICLM "
          f"{ratios['generate_tps_ratio_iclm_compiled_vs_eager']:.2f}×; ICLM / LoRA tokens/s: static cache "
          f"{ratios['generate_tps_ratio_static']:.2f}, compiled {ratios['generate_tps_ratio_compiled']:.2f}")
    return ratios


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    size.add_argument("--num-domains", type=int, default=2, help="N of the main ICLM variants (N=8 is measured too)")
    size.add_argument("--adapter-layers", type=int, default=None, help="K of the shared-trunk variants (default L/2)")
    size.add_argument("--mi-rows", type=int, default=2048, help="positions n of the MI memory measurement")
    run = parser.add_argument_group("measurement")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    run.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the base's dtype")
    run.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    run.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    run.add_argument("--gen-repeats", type=int, default=3, help="timed generate() calls")
    run.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every measurement (see above)")
    run.add_argument("--no-memory-options", dest="memory_options", action="store_false",
                     help="skip the gradient-checkpointing, bf16 and int8-base variants")
    run.add_argument("--paper", action="store_true", help="also measure the paper code's N+2-copies design (N=2, 4)")
    run.add_argument("--compile", action="store_true",
                     help="also measure LoRA and ICLM under torch.compile (training step; generation with a static "
                          "cache and compiled decoding) and print compiled-vs-eager ratios")
    run.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps: a smoke test, not a measurement")
    run.add_argument("--json", metavar="PATH", help="also write every number (per-step times included) here")
    run.add_argument("--profile", metavar="VARIANT", help="print one training variant's top operators and exit")


def check_arguments(args) -> argparse.Namespace:
    """Validate before any measurement; fill the derived defaults."""
    if args.quick:
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        defaults = vars(defaults.parse_args([]))
        given = [f"--{key.replace('_', '-')}" for key in QUICK if getattr(args, key, None) != defaults.get(key)]
        if given:
            raise ValueError(f"--quick sets its own tiny sizes and step counts, and would override {', '.join(given)}: "
                             "drop --quick to measure with them, or drop them for the smoke test.")
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.intermediate is None:
        args.intermediate = -(-8 * args.hidden // 3 // 16) * 16
    if args.adapter_layers is None:
        args.adapter_layers = max(args.layers // 2, 1)
    if not 1 <= args.adapter_layers < args.layers:
        raise ValueError(f"--adapter-layers must be in 1 … {args.layers - 1} for a {args.layers}-layer base.")
    if args.hidden % args.heads:
        raise ValueError(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}.")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}.")
    for name in ("vocab", "hidden", "layers", "heads", "batch", "seq", "answer", "steps", "prompt", "new_tokens",
                 "num_domains", "threads", "mi_rows", "gen_repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.answer >= args.seq:
        raise ValueError(f"--answer {args.answer} must be smaller than --seq {args.seq} (the prompt needs tokens).")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device here.")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda[:i], got {args.device!r}.")
    if args.profile and args.profile not in training_variants(args):
        raise ValueError(f"--profile {args.profile!r}: choose one of {', '.join(training_variants(args))}.")
    return args


def run(args: argparse.Namespace) -> int:
    args = check_arguments(args)
    if args.profile:
        profile(args.profile, args)
        return 0
    loads = [_load_line("at start", args)]
    training = measure(training_variants(args), training_setup, args, args.warmup, args.steps)
    generation = measure(generation_variants(args), generation_setup, args, 1, args.gen_repeats)
    mi = measure({"iclm": Variant("C×C", "iclm"), "paper": Variant("n×C×C", "paper")}, mi_setup, args, 0, 1)
    loads.append(_load_line("at end", args))
    summary = report(training, generation, mi, args, loads)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
        print(f"\nwrote {args.json}")
    print(json.dumps({k: round(v, 4) for k, v in summary["ratios"].items()}))
    return 0  # a benchmark: FAIL lines are findings, not errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="iclm bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
