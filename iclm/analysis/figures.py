"""The experiment's figures, as PNG files.

Figures are built with matplotlib's object API on an Agg canvas (``Figure`` + ``FigureCanvasAgg``)
rather than ``pyplot``: nothing changes the process-wide backend or leaks open figures, so the
functions are safe to call from a training script, a notebook or a headless server. Each takes
its data and an output path, writes a PNG of exactly ``figsize × DPI`` pixels and returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory
from sklearn.decomposition import PCA

from ._splits import ordered_splits
from .independence import as_features
from .routing import as_labels

DPI = 120
_GROUP_GAP = 0.7  # extra x space between the in-distribution and the o.o.d. bar groups


def _figure(figsize: tuple[float, float], ncols: int = 1):
    figure = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _colours(count: int, palette: str = "tab10"):
    """Distinct colours from a qualitative palette (tab20 when it has too few)."""
    cmap = colormaps[palette if count <= colormaps[palette].N else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def plot_accuracy_by_split(results: Mapping, splits: Mapping, path, *, title: str = "Accuracy by test split",
                           ylabel: str = "exact-match accuracy", figsize: tuple[float, float] | None = None) -> Path:
    """Grouped bars (one group per test split, one bar per system) with 95% CI error bars.

    ``results`` / ``splits``: see :mod:`iclm.analysis._splits`. In-distribution groups come first,
    o.o.d. ones are hatched and sit after a dotted separator; each group carries a dashed line at
    its chance level (and a dotted one at its majority level when given). A missing system/split
    leaves a gap; a single-run result (nan interval) gets no error bar.
    """
    in_distribution, ood = ordered_splits(results, splits)
    order = in_distribution + ood
    systems = list(results)
    width = 0.8 / len(systems)
    centres = np.arange(len(order)) + np.where(np.arange(len(order)) >= len(in_distribution), _GROUP_GAP, 0.0)
    if figsize is None:
        figsize = (min(20.0, max(7.0, 3.0 + len(order) * (0.16 * len(systems) + 0.4))), 5.5)
    figure, (ax,) = _figure(figsize)

    top = 1.0
    for index, (system, colour) in enumerate(zip(systems, _colours(len(systems)))):
        offset = (index - (len(systems) - 1) / 2) * width
        for position, split in zip(centres, order):
            stats = results[system].get(split)
            if stats is None:
                continue
            x = position + offset
            ax.bar(x, stats["mean"], width, color=colour, edgecolor="black", linewidth=0.4,
                   hatch="//" if splits[split]["ood"] else None)
            low, high = stats.get("ci95_low", math.nan), stats.get("ci95_high", math.nan)
            if math.isfinite(low) and math.isfinite(high):
                ax.errorbar(x, stats["mean"], yerr=[[stats["mean"] - low], [high - stats["mean"]]], color="black",
                            capsize=2, linewidth=0.8)
                top = max(top, high)
            top = max(top, stats["mean"])

    has_majority = False
    for position, split in zip(centres, order):
        left, right = position - 0.45, position + 0.45
        ax.hlines(splits[split]["chance"], left, right, colors="black", linestyles="--", linewidth=1.0)
        if splits[split].get("majority") is not None:
            ax.hlines(splits[split]["majority"], left, right, colors="dimgray", linestyles=":", linewidth=1.2)
            has_majority = True

    axis_top = top * 1.12
    label_at = blended_transform_factory(ax.transData, ax.transAxes)
    groups = [(in_distribution, "in distribution", centres[: len(in_distribution)]),
              (ood, "out of distribution", centres[len(in_distribution):])]
    for names, label, positions in groups:
        if names:
            ax.text(positions.mean(), 0.97, label, transform=label_at, ha="center", va="top", fontsize=10,
                    fontweight="bold")
    if in_distribution and ood:
        ax.axvline((centres[len(in_distribution) - 1] + centres[len(in_distribution)]) / 2, color="gray",
                   linestyle=":", linewidth=1.0)

    ax.set_xticks(centres, order, rotation=30, ha="right")
    ax.set_xlim(centres[0] - 0.6, centres[-1] + 0.6)
    ax.set_ylim(0.0, axis_top)
    ax.set_xlabel("test split")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles = [Patch(facecolor=colour, edgecolor="black", label=system) for system, colour in zip(systems, _colours(len(systems)))]
    handles.append(Line2D([], [], color="black", linestyle="--", label="chance"))
    if has_majority:
        handles.append(Line2D([], [], color="dimgray", linestyle=":", label="majority answer"))
    if ood:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="o.o.d. split"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(figure, path)


def _heatmap(figure: Figure, ax, values: np.ndarray, rows: Sequence[str], columns: Sequence[str], fmt: str, *,
             cmap: str, vmin: float, vmax: float, colorbar_label: str) -> None:
    """An annotated heatmap; ``nan`` cells are left blank and marked "—"."""
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), value in np.ndenumerate(values):
        if not math.isfinite(value):
            text, colour = "—", "black"
        else:  # dark text on light cells, light text on dark ones (by the cell colour's luminance)
            red, green, blue, _ = image.cmap(image.norm(value))
            text, colour = format(value, fmt), "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    figure.colorbar(image, ax=ax, label=colorbar_label, shrink=0.9)


def plot_router_confusion(report: Mapping, labels: Sequence[str], path, *, title: str = "Router routes vs true distribution",
                          figsize: tuple[float, float] | None = None) -> Path:
    """Heatmap of :func:`routing_report`'s confusion matrix (rows: ``labels`` of the true
    distributions, columns: routes with their share of inputs), counts annotated, and purity / NMI /
    ARI / perplexity in the title."""
    confusion = np.asarray(report["confusion"], dtype=np.float64)
    if len(labels) != confusion.shape[0]:
        raise ValueError(f"{len(labels)} labels for {confusion.shape[0]} true distributions in the report.")
    columns = [f"route {k}\n({share:.0%})" for k, share in enumerate(report["route_shares"])]
    if figsize is None:
        figsize = (max(5.0, 2.5 + 1.0 * confusion.shape[1]), max(3.5, 1.8 + 0.6 * confusion.shape[0]))
    figure, (ax,) = _figure(figsize)
    _heatmap(figure, ax, confusion, labels, columns, ".0f", cmap="Blues", vmin=0.0, vmax=max(confusion.max(), 1.0),
             colorbar_label="inputs")
    ax.set_xlabel("route (share of inputs)")
    ax.set_ylabel("true distribution")
    ax.set_title(f"{title}\npurity {report['purity']:.3f} · NMI {report['nmi']:.3f} · ARI {report['ari']:.3f} · "
                 f"perplexity {report['perplexity']:.2f}/{report['num_routes']}", fontsize=10)
    return _save(figure, path)


def plot_router_embeddings(embeddings, true_domains, routes, labels: Sequence[str], path, *,
                           title: str = "Router embeddings (PCA)", figsize: tuple[float, float] | None = None) -> Path:
    """The router's pooled prompt embeddings [n, D] projected to 2-D by PCA, in two panels: coloured
    by true distribution (named by ``labels``) and by route; shows whether clusters match domains."""
    points = as_features(embeddings, "embeddings")
    truth, routes = as_labels(true_domains, "true_domains"), as_labels(routes, "routes")
    if not (points.shape[0] == truth.shape[0] == routes.shape[0]):
        raise ValueError(f"embeddings, true_domains and routes must pair up, got {points.shape[0]}, {truth.shape[0]}, "
                         f"{routes.shape[0]} rows.")
    if points.shape[0] < 2 or points.shape[1] < 2:
        raise ValueError(f"a 2-D projection needs at least 2 inputs and 2 features, got {points.shape}.")
    if truth.max() >= len(labels):
        raise ValueError(f"{len(labels)} labels, but true_domains reaches {truth.max()}.")
    pca = PCA(n_components=2, random_state=0)
    projected = pca.fit_transform(points)
    figure, axes = _figure(figsize or (11.0, 4.8), ncols=2)
    # Routes get their own palette and markers: route k is no more "distribution k" than any other.
    panels = [(axes[0], truth, list(labels), "by true distribution", "tab10", "o"),
              (axes[1], routes, [f"route {k}" for k in range(routes.max() + 1)], "by route", "Dark2", "s^DvP*X")]
    for ax, groups, names, subtitle, palette, markers in panels:
        for group, (name, colour) in enumerate(zip(names, _colours(len(names), palette))):
            chosen = groups == group
            if chosen.any():
                ax.scatter(projected[chosen, 0], projected[chosen, 1], s=14, color=colour, alpha=0.75, label=name,
                           marker=markers[group % len(markers)], edgecolors="none")
        ax.set_xlabel(f"PC1 ({pca.explained_variance_ratio_[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({pca.explained_variance_ratio_[1]:.0%} of variance)")
        ax.set_title(subtitle)
        ax.legend(fontsize=8, markerscale=1.5)
    figure.suptitle(title)
    return _save(figure, path)


def plot_independence_heatmap(table: Mapping, path, *, cka: str = "cka", title: str = "Module independence at inference",
                              figsize: tuple[float, float] | None = None) -> Path:
    """Two heatmaps of :func:`independence_table`: CKA (``cka="cka"`` or ``"cka_debiased"``) and MI
    between the invariant module and each domain module (columns), per test split (rows)."""
    if cka not in ("cka", "cka_debiased"):
        raise ValueError(f"cka must be 'cka' or 'cka_debiased', got {cka!r}.")
    similarity, mi = np.asarray(table[cka], dtype=np.float64), np.asarray(table["mi"], dtype=np.float64)
    expected = (len(table["splits"]), len(table["modules"]))
    if similarity.shape != expected or mi.shape != expected:
        raise ValueError(f"table values must be splits × modules = {expected}, got {similarity.shape} and {mi.shape}.")
    rows = [f"{split} (n={n})" for split, n in zip(table["splits"], table["n"])]
    columns = list(table["modules"])
    if figsize is None:
        figsize = (max(9.0, 4.0 + 2.4 * len(columns)), max(3.5, 1.8 + 0.5 * len(rows)))
    figure, (left, right) = _figure(figsize, ncols=2)
    floor = min(0.0, float(np.nanmin(similarity))) if np.isfinite(similarity).any() else 0.0
    _heatmap(figure, left, similarity, rows, columns, ".2f", cmap="viridis", vmin=floor, vmax=1.0,
             colorbar_label="linear CKA" + (" (debiased)" if cka == "cka_debiased" else ""))
    mi_top = float(np.nanmax(mi)) if np.isfinite(mi).any() else 1.0
    mi_format = ".3f" if mi_top >= 0.01 else ".1e"  # a well-trained invariant module's MI is tiny: keep it readable
    _heatmap(figure, right, mi, rows, columns, mi_format, cmap="magma", vmin=0.0, vmax=max(mi_top, 1e-12),
             colorbar_label="MI (nats)")
    left.set_title("CKA" + (" (debiased)" if cka == "cka_debiased" else "") + ": invariant vs module")
    right.set_title("MI estimate: invariant vs module")
    right.set_yticklabels([])
    for ax in (left, right):
        ax.set_xlabel("domain module")
    left.set_ylabel("test split")
    figure.suptitle(title)
    return _save(figure, path)


def plot_learning_curves(curves: Mapping, splits: Mapping, path, *, title: str = "Learning curves (in-distribution splits)",
                         ylabel: str = "accuracy", figsize: tuple[float, float] | None = None) -> Path:
    """Accuracy vs training step, one panel per split and one line per system (mean over seeds, band = 95% CI
    when there are several seeds), with each split's majority answer (dashed) and best context-blind rule
    (dotted, where it beats the majority, e.g. RAVEN's answer-set-only rule on the real candidate sets).

    ``curves``: ``{system: {"steps": [s0, s1, ...], "splits": {split: [[value per seed] per step]}}}``;
    ``splits``: split metadata with ``chance`` / ``majority`` / ``answer_set_only`` where known.
    """
    from .statistics import mean_ci95

    if not curves:
        raise ValueError("plot_learning_curves needs at least one system's curve.")
    names = list(dict.fromkeys(split for curve in curves.values() for split in curve["splits"]))
    if not names:
        raise ValueError("The curves hold no split.")
    unknown = [name for name in names if name not in splits]
    if unknown:
        raise ValueError(f"Curves for splits without metadata: {unknown}.")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=figsize or (4.2 * columns + 2.2, 3.2 * rows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    colours = dict(zip(curves, _colours(len(curves))))
    for ax, split in zip(axes, names):
        for system, curve in curves.items():
            series = curve["splits"].get(split)
            if not series:
                continue
            steps = [step for step, values in zip(curve["steps"], series) if values]
            stats = [mean_ci95(values) for values in series if values]
            means = np.array([s["mean"] for s in stats])
            ax.plot(steps, means, marker="o", markersize=3, color=colours[system], label=system, linewidth=1.4)
            lows = np.array([s["ci95_low"] for s in stats])
            highs = np.array([s["ci95_high"] for s in stats])
            if np.all(np.isfinite(lows)) and np.all(np.isfinite(highs)):
                ax.fill_between(steps, np.clip(lows, 0, 1), np.clip(highs, 0, 1), color=colours[system], alpha=0.12,
                                linewidth=0)
        meta = splits[split]
        if meta.get("majority") is not None:
            ax.axhline(meta["majority"], color="dimgray", linestyle="--", linewidth=1.0)
        blind = meta.get("answer_set_only")
        if blind is not None and blind > (meta.get("majority") or 0):
            ax.axhline(blind, color="black", linestyle=":", linewidth=1.2)
        ax.set_title(split, fontsize=9)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colours[system], marker="o", markersize=3, label=system) for system in curves]
    handles.append(Line2D([], [], color="dimgray", linestyle="--", label="majority answer"))
    if any((splits[n].get("answer_set_only") or 0) > (splits[n].get("majority") or 0) for n in names):
        handles.append(Line2D([], [], color="black", linestyle=":", label="answer-set-only rule"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    figure.suptitle(title)
    return _save(figure, path)
