"""Interventions on a trained ICLM's modules (``iclm interventions``): how much does the answer depend on which module?

For every test row of every split, the greedy answer of the full ICLM (routed as usual) is compared with the answer
under each intervention:

* ``force_domain_k``: counterfactual routing, domain module k forced for every row (``domain_ids = k``), the
  invariant module and the aggregation as usual;
* ``invariant_only``: the domain module ablated, the invariant module alone (``module="invariant"``);
* ``domain_only``: the invariant module ablated, the routed domain module alone (``module="domain"``).

Answers are compared after the benchmark's normalisation (:func:`iclm.metrics.normalization.normalize_answer`: the
first word, or the first letter A-H for RAVEN), so a change in what follows the answer does not count. Per split and
intervention: the share of rows whose answer changes, with a 95% Wilson interval over rows (pooled over the models
given); with two or more models (e.g. seeds) also the mean ± 95% Student-t interval of the per-model shares.
``force_domain_k`` leaves a row routed to k unchanged by construction, so its share among the rows routed elsewhere
(``counterfactual``) is reported too, and ``any_other_domain`` counts a row when some other domain module changes its
answer. Reading: ``invariant_only`` = how much the answer depends on the domain module, ``domain_only`` = how much it
depends on the invariant module, ``any_other_domain`` = how much it depends on which domain module the router picks.

The model: any saved ICLM folder (``iclm continual`` saves ``models/seed_<s>/iclm_added``, a grown model;
``iclm experiment`` saves ``models/seed_<s>/iclm``). This command trains nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

DEFAULT_SPLITS = ("acre_text_iid", "acre_symbolic_iid", "raven_text_center_single", "raven_symbolic_center_single")
Z95 = 1.959963984540054


def parse_split(name: str) -> tuple[str, str, str]:
    """``acre_text_iid`` → ``("acre", "text", "iid")`` (the names of ``iclm.tasks.split_name``)."""
    from iclm.tasks.benchmark import ALL_SPLITS

    parts = name.split("_", 2)
    if len(parts) != 3 or parts[0] not in ALL_SPLITS or parts[1] not in ("text", "symbolic") \
            or parts[2] not in ALL_SPLITS[parts[0]]:
        known = [f"{t}_<text|symbolic>_{s}" for t, splits in ALL_SPLITS.items() for s in splits
                 if s not in ("train", "validation", "train_generated")]
        raise ValueError(f"Unknown split {name!r}; expected one of {', '.join(known)}.")
    return parts[0], parts[1], parts[2]


def wilson(changed: int, count: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``changed / count`` (``nan`` bounds for ``count == 0``)."""
    if count == 0:
        return math.nan, math.nan
    p = changed / count
    denominator = 1 + Z95**2 / count
    centre = (p + Z95**2 / (2 * count)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / count + Z95**2 / (4 * count**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _share(flags: list[bool]) -> dict:
    count, changed = len(flags), int(sum(flags))
    low, high = wilson(changed, count)
    return {"share": changed / count if count else math.nan, "ci95_low": low, "ci95_high": high, "changed": changed,
            "count": count}


@torch.no_grad()
def greedy_answers(model, tokenizer, rows, *, batch_size: int = 32, max_length: int = 1536, max_new_tokens: int = 3,
                   module=None, force: int | None = None) -> list[str]:
    """Greedy continuations of the rows' prompts, with ``module=`` or domain module ``force`` forced for every row
    (counterfactual routing): the experiment's own generation with this module's defaults."""
    from .evaluation import generate_answers

    return generate_answers(model, tokenizer, rows, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            max_length=max_length, module=module, force=force, desc="intervention")


@torch.no_grad()
def prompt_routes(model, tokenizer, rows, *, batch_size: int = 32, max_length: int = 1536) -> list[int]:
    """The domain module the router picks for each prompt (what ``generate`` uses)."""
    from iclm.tasks import AnswerOnlyCollator

    collator = AnswerOnlyCollator(tokenizer, max_length=max_length, return_prompt_only=True)
    device = next(model.parameters()).device
    routes = []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        routes += model.route(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device)).routes.reshape(-1).tolist()
    return [int(r) for r in routes]


def intervention_names(model) -> list[str]:
    names = [f"force_domain_{k}" for k in range(model.config.num_domains)]
    if model.config.use_invariant_module:
        names += ["invariant_only", "domain_only"]
    return names


def analyse_rows(model, tokenizer, rows, *, batch_size: int = 32, max_length: int = 1536) -> dict:
    """Every intervention on ``rows`` for one model: per-row normalised answers, routes and change flags."""
    from iclm.metrics.normalization import answer_format, normalize_answer

    from .evaluation import answer_token_budget

    formats = [answer_format(row["answer"]) for row in rows]
    references = [normalize_answer(row["answer"], f) for row, f in zip(rows, formats)]
    options = dict(batch_size=batch_size, max_length=max_length,
                   max_new_tokens=answer_token_budget(tokenizer, rows))

    def answers(**kwargs):
        return [normalize_answer(text, f) for text, f in zip(greedy_answers(model, tokenizer, rows, **options,
                                                                             **kwargs), formats)]

    routed = answers()
    record = {"routes": prompt_routes(model, tokenizer, rows, batch_size=batch_size, max_length=max_length),
              "answers": {"routed": routed}, "correct": {"routed": [a == r for a, r in zip(routed, references)]},
              "changed": {}}
    for name in intervention_names(model):
        if name.startswith("force_domain_"):
            new = answers(force=int(name.rsplit("_", 1)[1]))
        else:
            new = answers(module=name.split("_")[0])
        record["answers"][name] = new
        record["correct"][name] = [a == r for a, r in zip(new, references)]
        record["changed"][name] = [a != b for a, b in zip(new, routed)]
    return record


def summarise_split(records: list[dict], num_domains: int) -> dict:
    """Shares over the rows of one split, pooled over models (Wilson), and over models (Student t, ≥ 2 models)."""
    from iclm.analysis import mean_ci95

    names = list(records[0]["changed"])
    pooled = {name: [flag for r in records for flag in r["changed"][name]] for name in names}
    routes = [k for r in records for k in r["routes"]]
    result = {"rows": len(records[0]["routes"]), "models": len(records),
              "route_shares": {str(k): routes.count(k) / len(routes) for k in range(num_domains)},
              "changed": {name: _share(flags) for name, flags in pooled.items()},
              "accuracy": {name: sum(f for r in records for f in r["correct"][name]) / len(routes)
                           for name in ["routed", *names]}}
    forced = [n for n in names if n.startswith("force_domain_")]
    for name in forced:  # the rows routed elsewhere: the counterfactual ones
        k = int(name.rsplit("_", 1)[1])
        flags = [flag for r in records for flag, route in zip(r["changed"][name], r["routes"]) if route != k]
        result["changed"][name]["counterfactual"] = _share(flags) if flags else None
    any_other = [any(r["changed"][n][i] for n in forced if int(n.rsplit("_", 1)[1]) != r["routes"][i])
                 for r in records for i in range(len(r["routes"]))]
    result["changed"]["any_other_domain"] = _share(any_other)
    if len(records) >= 2:
        for name in [*names, "any_other_domain"]:
            if name == "any_other_domain":
                per_model = [sum(any(r["changed"][n][i] for n in forced if int(n.rsplit("_", 1)[1]) != r["routes"][i])
                                 for i in range(len(r["routes"]))) / len(r["routes"]) for r in records]
            else:
                per_model = [sum(r["changed"][name]) / len(r["changed"][name]) for r in records]
            result["changed"][name]["over_models"] = mean_ci95(per_model)
    return result


def load_rows(split: str, rows: int) -> list[dict]:
    from iclm.tasks import load_task

    task, rendering, name = parse_split(split)
    return load_task(task, rendering, name, limit=rows, seed=0, raven_generated=max(rows, 50)).to_list()


def load_iclm(folder: str, base_model: str | None = None):
    from transformers import AutoTokenizer

    from modeling_iclm import IclmForCausalLM

    kwargs = {"base_model_name_or_path": base_model} if base_model else {}
    model = IclmForCausalLM.from_pretrained(folder, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_source or folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def run_interventions(models: list[str], out, splits=DEFAULT_SPLITS, rows: int = 60, base_model: str | None = None,
                      batch_size: int = 32, max_length: int = 1536, log=print) -> dict:
    """The analysis over ``models`` (saved ICLM folders with the same module count, e.g. one per seed)."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {split: load_rows(split, rows) for split in splits}
    per_model, num_domains, seconds = [], None, {}
    for folder in models:
        tick = time.time()
        model, tokenizer = load_iclm(folder, base_model)
        if num_domains is not None and model.config.num_domains != num_domains:
            raise ValueError(f"{folder} has {model.config.num_domains} domain modules, the models before it "
                             f"{num_domains}: give models of one kind (e.g. one per seed).")
        num_domains = model.config.num_domains
        per_model.append({split: analyse_rows(model, tokenizer, split_rows, batch_size=batch_size,
                                              max_length=max_length) for split, split_rows in data.items()})
        seconds[folder] = round(time.time() - tick, 1)
        log(f"{folder}: {seconds[folder]} s")
        invariant = model.config.use_invariant_module
        del model
    summary = {split: summarise_split([m[split] for m in per_model], num_domains) for split in splits}
    # Module k of one model is not module k of another (k-means labels differ between seeds; an added module has
    # the same index everywhere): the per-k columns are also given per model.
    by_model = [{split: summarise_split([m[split]], num_domains) for split in splits} for m in per_model]
    figure = plot_interventions(summary, out / "figures" / "interventions.png")
    results = {"models": [str(m) for m in models], "num_domains": num_domains, "invariant_module": invariant,
               "splits": list(splits), "rows_per_split": rows, "summary": summary,
               "per_model_summary": by_model,
               "per_model": [{split: {k: m[split][k] for k in ("routes", "answers", "changed")} for split in splits}
                             for m in per_model],
               "seconds": seconds, "wall_time_seconds": round(time.time() - started, 1),
               "figure": str(figure.relative_to(out))}
    from .runner import environment

    results.update(environment())
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(results_markdown(results))
    log(f"Wrote {out / 'results.json'}, {out / 'results.md'} and {figure}.")
    return results


def _columns(summary: dict) -> list[str]:
    names = list(next(iter(summary.values()))["changed"])
    forced = [n for n in names if n.startswith("force_domain_")]
    return forced + ["any_other_domain"] + [n for n in ("invariant_only", "domain_only") if n in names]


LABELS = {"any_other_domain": "any other domain module", "invariant_only": "invariant alone (domain ablated)",
          "domain_only": "routed domain alone (invariant ablated)"}


def _label(name: str) -> str:
    return LABELS.get(name, name.replace("force_domain_", "force domain "))


def plot_interventions(summary: dict, path) -> Path:
    """Grouped bars: per split, the share of rows whose answer changes under each intervention (95% Wilson bars)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = _columns(summary)
    splits = list(summary)
    figure = Figure(figsize=(max(6.0, 1.0 + 0.45 * len(columns) * len(splits)), 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / len(columns)
    cmap = colormaps["tab10"]
    for j, name in enumerate(columns):
        xs, ys, low, high = [], [], [], []
        for i, split in enumerate(splits):
            cell = summary[split]["changed"][name]
            xs.append(i + (j - (len(columns) - 1) / 2) * width)
            ys.append(cell["share"])
            low.append(cell["share"] - cell["ci95_low"])
            high.append(cell["ci95_high"] - cell["share"])
        ax.bar(xs, ys, width=width, color=cmap(j % 10), label=_label(name), yerr=[low, high], capsize=2,
               error_kw={"linewidth": 0.7}, edgecolor="black", linewidth=0.3,
               hatch="//" if name in ("invariant_only", "domain_only") else None)
    ax.set_xticks(range(len(splits)), splits, fontsize=8, rotation=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of rows whose answer changes")
    ax.set_title("Interventions on the modules: answer changes vs the routed ICLM (95% Wilson intervals)", fontsize=9)
    ax.legend(fontsize=7, ncols=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    return path


def _cell(entry: dict | None) -> str:
    if not entry:
        return "—"
    text = f"{100 * entry['share']:.1f} [{100 * entry['ci95_low']:.1f}, {100 * entry['ci95_high']:.1f}]"
    over = entry.get("over_models")
    if over and not math.isnan(over["half_width"]):
        text += f" ({100 * over['mean']:.1f} ± {100 * over['half_width']:.1f})"
    return text


def results_markdown(results: dict) -> str:
    summary = results["summary"]
    columns = _columns(summary)
    several = len(results["models"]) >= 2
    lines = ["# Interventions on the modules", "",
             f"Models ({len(results['models'])}): " + ", ".join(f"`{m}`" for m in results["models"])
             + f"; {results['num_domains']} domain modules; {results['rows_per_split']} test rows per split; "
             f"{results['wall_time_seconds']:.0f} s.", "",
             "## Share of rows (%) whose greedy answer changes", "",
             "Against the full ICLM routed as usual. [95% Wilson interval over rows, pooled over models]"
             + (" (mean ± 95% t half-width over models: with 3 models t = 4.3, so these are wide and not clipped "
                "to [0, 100])" if several else "") + ". *force domain k*: counterfactual "
             "routing (module k for every row; rows already routed to k cannot change); *any other domain module*: "
             "some other domain module changes the row's answer; *invariant alone*: the domain module ablated; "
             "*routed domain alone*: the invariant module ablated.", "",
             "| split | " + " | ".join(_label(c) for c in columns) + " |", "|:---|" + "---:|" * len(columns)]
    for split, entry in summary.items():
        lines.append(f"| {split} | " + " | ".join(_cell(entry["changed"][c]) for c in columns) + " |")
    forced = [c for c in columns if c.startswith("force_domain_")]
    lines += ["", "## Counterfactual routing among the rows routed elsewhere, and routes"
              + (" (pooled over models)" if several else ""), "",
              "| split | routed to (share per module) | " + " | ".join(_label(c) + " (rows not routed to it)"
                                                            for c in forced) + " |",
              "|:---|:---|" + "---:|" * len(forced)]
    for split, entry in summary.items():
        shares = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in entry["route_shares"].items())
        lines.append(f"| {split} | {shares} | " + " | ".join(_cell(entry["changed"][c].get("counterfactual"))
                                                            for c in forced) + " |")
    if several:
        lines += ["", "## Per model: routes and forced modules", "",
                  "Module k of one model is not module k of another: the router's k-means labels differ between "
                  "seeds (a module added by `iclm continual` has the same index in every model). Share of rows (%) "
                  "whose answer changes.", "",
                  "| model | split | routed to | " + " | ".join(_label(c) for c in forced) + " |",
                  "|:---|:---|:---|" + "---:|" * len(forced)]
        for model, entries in zip(results["models"], results["per_model_summary"]):
            for split, entry in entries.items():
                shares = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in entry["route_shares"].items() if v)
                lines.append(f"| `{model}` | {split} | {shares} | "
                             + " | ".join(f"{100 * entry['changed'][c]['share']:.1f}" for c in forced) + " |")
    names = ["routed", *[c for c in columns if c != "any_other_domain"]]
    lines += ["", "## Accuracy (%) under each intervention (normalised exact match)", "",
              "| split | " + " | ".join("routed ICLM" if n == "routed" else _label(n) for n in names) + " |",
              "|:---|" + "---:|" * len(names)]
    for split, entry in summary.items():
        lines.append(f"| {split} | " + " | ".join(f"{100 * entry['accuracy'][n]:.1f}" for n in names) + " |")
    lines += ["", "![interventions](figures/interventions.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--model", nargs="+", required=True, metavar="DIR",
                        help="saved ICLM folder(s) with the same module count, e.g. one per seed "
                             "(iclm continual: models/seed_<s>/iclm_added; iclm experiment: models/seed_<s>/iclm)")
    parser.add_argument("--out", required=True, help="output folder (new or empty, or an earlier interventions "
                                                     "output, which is replaced)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), metavar="SPLIT",
                        help=f"test splits (default: {' '.join(DEFAULT_SPLITS)})")
    parser.add_argument("--rows", type=int, default=60, help="test rows per split (default 60)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--base-model", default=None,
                        help="the base to load a by-reference checkpoint on (default: the one its config names)")


def run(args) -> int:
    from iclm.sources import check_output_folder

    if args.rows < 1 or args.batch_size < 1:
        raise ValueError(f"--rows and --batch-size must be >= 1, got {args.rows} and {args.batch_size}.")
    for split in args.splits:
        parse_split(split)
    from iclm.sources import check_iclm_folder

    for folder in args.model:
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"--model {folder}: no saved model there (no config.json).")
        check_iclm_folder(folder, option="--model")
    check_output_folder(args.out, "--out", reusable=lambda folder: (folder / "results.json").is_file()
                        and (folder / "figures" / "interventions.png").is_file(),
                        reuse="an earlier `iclm interventions` output, which is replaced")
    from iclm.terminal import quiet_run

    with quiet_run():
        run_interventions(args.model, args.out, splits=args.splits, rows=args.rows, base_model=args.base_model,
                          batch_size=args.batch_size)
    return 0
