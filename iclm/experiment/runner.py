"""The paper's experiment end to end: data, base, every system × seed, analysis, outputs.

Each finished (seed, system) is written to ``runs/seed_<s>/<system>.json`` (trained models to
``models/seed_<s>/<system>/``) before the next starts, so an interrupted run resumes where it stopped
and never redoes a finished seed. The summary (``results.json``, ``results.md``, figures) is rebuilt
from those files at the end.
"""

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from iclm.tasks import load_task, split_name

from .evaluation import evaluate_system
from .presets import ExperimentPreset
from .systems import DERIVED, TRAINED, check_systems, load_base, load_trained, train_system

DISTRIBUTIONS = ["acre/text", "acre/symbolic", "raven/text", "raven/symbolic"]  # domain ids 0..3
TEST_SPLITS = {"acre": {"iid": False, "comp": True, "sys": True},
               "raven": {"center_single": False, "distribute_four": True, "in_center_single_out_center_single": True}}


@dataclass
class ExperimentConfig:
    out: str
    preset: ExperimentPreset
    systems: list[str]
    base_model: str | None = None
    cache_dir: str | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """What must match for a run folder to be resumed."""
        return {"preset": self.preset.to_dict(), "base_model": self.base_model, "load_in_4bit": self.load_in_4bit,
                "dtype": self.dtype}


def _write_json(path: Path, data) -> None:
    """Atomic: a crash never leaves a half-written result that resume would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def training_texts() -> list[str]:
    """Every training row's prompt + answer (never test data): the embedded default base pretrains on these."""
    return [row["prompt"] + row["answer"] for task in TEST_SPLITS for rendering in ("text", "symbolic")
            for row in load_task(task, rendering, "train", seed=0)]


def load_data(preset: ExperimentPreset):
    """Training rows (4 distributions, mixed) and test rows per split, with the splits' o.o.d. flags."""
    import datasets

    train_parts = [load_task(task, rendering, "train", limit=preset.train_per_distribution, seed=0)
                   for task in TEST_SPLITS for rendering in ("text", "symbolic")]
    train = datasets.concatenate_datasets(train_parts).shuffle(seed=0)
    tests, splits = {}, {}
    for task, task_splits in TEST_SPLITS.items():
        for rendering in ("text", "symbolic"):
            for split, ood in task_splits.items():
                name = split_name(task, rendering, split)
                tests[name] = load_task(task, rendering, split, limit=preset.test_per_split, seed=0,
                                        raven_generated=max(preset.test_per_split, 50)).to_list()
                splits[name] = {"ood": ood}
    return train, tests, splits


def base_load_kwargs(config: ExperimentConfig) -> dict:
    kwargs = {"dtype": config.dtype}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return kwargs


def check_base_model(base: str) -> None:
    """A causal LM with an LM head, said clearly before anything is trained."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(base)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise ValueError(f"--base-model {base!r} is a {config.model_type!r} model without a causal-LM head; "
                         "use a decoder LM such as Llama, Qwen, Mistral or GPT-2.")


def check_memory(base: str, preset: ExperimentPreset, load_kwargs: dict) -> dict:
    """Estimate the peak memory of the largest system (ICLM: 2B rows) and refuse a preset that cannot fit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    bytes_per_weight = 0.6 if load_kwargs.get("quantization_config") else (
        2 if torch.cuda.is_available() or str(load_kwargs.get("dtype")) in ("bfloat16", "float16") else 4)
    activations = 2 * preset.batch_size * preset.max_length * text.num_hidden_layers * text.hidden_size * 24 * 4
    needed = params * bytes_per_weight * 2 + activations  # the base, a reloaded copy for evaluation, activations
    if torch.cuda.is_available():
        available = torch.cuda.mem_get_info()[0]
    else:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    estimate = {"parameters": params, "needed_bytes": int(needed), "available_bytes": int(available)}
    if needed > 0.9 * available:
        raise MemoryError(
            f"This preset needs about {needed / 2**30:.1f} GiB ({params / 1e6:.0f}M base parameters, batch "
            f"{preset.batch_size} × {preset.max_length} tokens) but {available / 2**30:.1f} GiB is free. Use a "
            "smaller --batch-size or --max-length, --load-in-4bit, or a smaller base model."
        )
    return estimate


def environment() -> dict:
    import datasets
    import peft
    import transformers

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "datasets": datasets.__version__},
        "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


def resolve_base(config: ExperimentConfig, log) -> tuple[str, str]:
    """The base's path and a description; builds (or reuses) the embedded default when none is given."""
    if config.base_model:
        check_base_model(config.base_model)
        return config.base_model, config.base_model
    from .default_base import build_default_base

    cache = config.cache_dir or os.environ.get("ICLM_CACHE", os.path.join(Path.home(), ".cache", "iclm"))
    path = build_default_base(training_texts(), cache_dir=cache, preset=config.preset.base_preset, log=log)
    return path, (f"embedded default ({config.preset.base_preset} preset): a small Llama pretrained on the training "
                  "splits only — a CPU stand-in for a real LLM")


def run_experiment(config: ExperimentConfig, log=print) -> dict:
    started = time.time()
    preset = config.preset
    systems = check_systems(config.systems)
    for derived, (source, _) in DERIVED.items():
        if derived in systems and source not in systems:
            raise ValueError(f"System {derived!r} evaluates a module of the trained {source!r}: add {source!r} to --systems.")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint_path = out / "experiment.json"
    previous = json.loads(fingerprint_path.read_text()) if fingerprint_path.exists() else None
    if previous is not None:
        settings = {k: v for k, v in previous.items() if k != "base"}
        if settings != config.fingerprint():
            raise ValueError(f"{out} holds a run with other settings ({settings}); resume it with the same options "
                             "or choose another --out.")
        log(f"Resuming the run in {out}.")

    log("Loading the benchmark (ACRE IID/Comp/Sys, RAVEN center_single + generated o.o.d. configurations)…")
    train, tests, splits = load_data(preset)
    base_path, base_description = resolve_base(config, log)
    # The embedded base's folder name holds the hash of its spec, texts and library versions: a resume must
    # not put results from two different bases in one table.
    base_identity = config.base_model or Path(base_path).name
    if previous is not None and previous.get("base", base_identity) != base_identity:
        raise ValueError(
            f"{out} was run on the base {previous['base']!r}, but this run resolves {base_identity!r} (the library "
            "versions, the packaged data or the base changed): choose another --out to start afresh."
        )
    _write_json(fingerprint_path, {**config.fingerprint(), "base": base_identity})
    load_kwargs = base_load_kwargs(config)
    memory = check_memory(base_path, preset, load_kwargs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log(f"Base: {base_description}. {len(train)} training rows, {len(tests)} test splits, "
        f"{preset.seeds} seed(s), systems {systems}.")

    plan = [(seed, system) for seed in range(preset.seeds) for system in systems]
    trained_iclm = {}
    for seed, system in tqdm(plan, desc="systems × seeds"):
        result_path = out / "runs" / f"seed_{seed}" / f"{system}.json"
        if result_path.exists():
            continue
        tick = time.time()
        torch.manual_seed(seed)
        model_dir = str(out / "models" / f"seed_{seed}" / (DERIVED.get(system, (system,))[0]))
        record = {"system": system, "seed": seed}
        if system == "base":
            model = load_base(base_path, load_kwargs).eval()
            record["splits"] = evaluate_system(model, tokenizer, tests, preset, name=system)
        elif system in TRAINED:
            model, history = train_system(system, base_path, load_kwargs, tokenizer, train, preset, seed, model_dir,
                                          DISTRIBUTIONS)
            record["train_log"] = history
            record["splits"] = evaluate_system(model, tokenizer, tests, preset, oracle=system == "iclm_oracle",
                                               name=system)
            if system == "iclm":
                trained_iclm[seed] = model
                record.update(analyse_router_and_independence(model, tokenizer, tests, preset, out, seed))
        else:
            source, module = DERIVED[system]
            model = trained_iclm.get(seed) or load_trained(source, base_path, load_kwargs, model_dir)
            record["splits"] = evaluate_system(model, tokenizer, tests, preset, module=module, name=system)
        record["seconds"] = round(time.time() - tick, 1)
        _write_json(result_path, record)
        log(f"seed {seed} {system}: mean accuracy "
            f"{sum(s['accuracy'] for s in record['splits'].values()) / len(record['splits']):.3f} "
            f"({record['seconds']} s)")
    return summarise(out, config, systems, splits, base_description, memory, started, log)


def analyse_router_and_independence(model, tokenizer, tests, preset, out: Path, seed: int) -> dict:
    from .probes import independence_probe, router_probe

    rows = [row for split_rows in tests.values() for row in split_rows[: preset.analysis_rows]]
    router = router_probe(model, tokenizer, rows, preset)
    independence = independence_probe(model, tokenizer, tests, preset)
    _write_json(out / "runs" / f"seed_{seed}" / "router_embeddings.json",
                {k: router[k] for k in ("routes", "true_domains", "embeddings")})
    return {"routing": router["report"], "independence": independence}


def summarise(out: Path, config, systems, splits, base_description, memory, started, log) -> dict:
    """results.json, results.md and the figures, from every finished run file."""
    from iclm.analysis import (plot_accuracy_by_split, plot_independence_heatmap, plot_router_confusion,
                               plot_router_embeddings, results_markdown, summarise_runs)

    runs = {system: {} for system in systems}
    records = {}
    for path in sorted((out / "runs").glob("seed_*/*.json")):
        record = json.loads(path.read_text())
        if "system" not in record or record["system"] not in runs:
            continue
        records[(record["seed"], record["system"])] = record
        for split, scores in record["splits"].items():
            runs[record["system"]].setdefault(split, []).append(scores["accuracy"])
    any_record = next(iter(records.values()))
    for split in splits:
        splits[split]["chance"] = any_record["splits"][split]["chance"]
        splits[split]["majority"] = any_record["splits"][split]["majority"]
    results = summarise_runs(runs)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    plot_accuracy_by_split(results, splits, figures / "accuracy_by_split.png")
    routing = {seed: rec["routing"] for (seed, system), rec in records.items() if system == "iclm"}
    if routing:
        first = min(routing)
        plot_router_confusion(routing[first], DISTRIBUTIONS, figures / "router_confusion.png")
        embeddings = json.loads((out / "runs" / f"seed_{first}" / "router_embeddings.json").read_text())
        plot_router_embeddings(embeddings["embeddings"], embeddings["true_domains"], embeddings["routes"],
                               DISTRIBUTIONS, figures / "router_embeddings.png")
        plot_independence_heatmap(records[(first, "iclm")]["independence"], figures / "independence.png",
                                  cka="cka_debiased")
    from iclm.analysis import mean_ci95

    summary = {
        "preset": config.preset.to_dict(), "base_model": base_description, "systems": systems, "splits": splits,
        "results": results,
        "router": {metric: mean_ci95([r[metric] for r in routing.values()]) for metric in ("purity", "nmi", "ari")}
        if routing else None,
        "router_per_seed": routing,
        "independence_seed0": records.get((min(routing), "iclm"), {}).get("independence") if routing else None,
        "memory_estimate": memory, **environment(),
        # This invocation only (a resumed run is shorter); the systems' own times add up across resumes.
        "wall_time_seconds": round(time.time() - started, 1),
        "systems_seconds_total": round(sum(rec["seconds"] for rec in records.values()), 1),
        "run_seconds": {f"seed_{s}/{name}": rec["seconds"] for (s, name), rec in records.items()},
    }
    _write_json(out / "results.json", summary)
    table = results_markdown(results, splits, percent=True, digits=1)
    (out / "results.md").write_text(
        f"# ICLM experiment ({config.preset.name} preset)\n\nBase: {base_description}.\n\n"
        f"Exact-match accuracy (%) of the greedy answer, mean ± 95% CI half-width over {config.preset.seeds} seed(s); "
        f"{config.preset.test_per_split} rows per split.\n\n{table}\n"
    )
    log(f"Wrote {out / 'results.json'}, {out / 'results.md'} and {figures}.")
    return summary
