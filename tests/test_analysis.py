"""The analysis library: statistics over seeds, router clustering scores, CKA / MI independence,
figures (real PNGs read back) and the Markdown results table."""

import itertools
import math
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from iclm.analysis import (
    independence_table, linear_cka, mean_ci95, module_independence, plot_accuracy_by_split, plot_independence_heatmap,
    plot_router_confusion, plot_router_embeddings, results_markdown, routing_report, summarise_runs, t_quantile_975,
)
from iclm.analysis.figures import DPI
from iclm.analysis.statistics import _t975_fallback
from mutual_information_iclm import mutual_information


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- statistics


def test_mean_ci95_matches_hand_computed_t_interval():
    stats = mean_ci95([0.5, 0.6, 0.7, 0.8])
    # mean 0.65; s = sqrt(0.05 / 3) = 0.1290994; se = s / 2; t_{0.975, 3} = 3.182446
    assert stats["mean"] == pytest.approx(0.65)
    assert stats["half_width"] == pytest.approx(3.182446 * 0.1290994 / 2, rel=1e-5)
    assert stats["ci95_low"] == pytest.approx(0.65 - 0.2054264, rel=1e-5)
    assert stats["ci95_high"] == pytest.approx(0.65 + 0.2054264, rel=1e-5)
    assert stats["n"] == 4 and stats["values"] == [0.5, 0.6, 0.7, 0.8]


def test_mean_ci95_single_run_has_undefined_interval():
    stats = mean_ci95([0.42])
    assert stats["mean"] == 0.42 and stats["n"] == 1
    assert all(math.isnan(stats[key]) for key in ("ci95_low", "ci95_high", "half_width"))


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [[0.1, 0.2]]])
def test_mean_ci95_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        mean_ci95(bad)


def test_t_quantile_fallback_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 31)) + [31, 45, 80, 200, 5000]:
        assert _t975_fallback(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-6), df


def test_t_quantile_works_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # makes `from scipy.stats import t` raise ImportError
    assert t_quantile_975(2) == pytest.approx(4.302653)
    assert t_quantile_975(1000) == pytest.approx(1.962339, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_summarise_runs_applies_mean_ci95_per_cell():
    results = summarise_runs({"ICLM": {"a": [0.2, 0.4], "b": [1.0]}, "base": {"a": [0.1, 0.1, 0.1]}})
    assert set(results) == {"ICLM", "base"} and set(results["ICLM"]) == {"a", "b"}
    assert results["ICLM"]["a"]["mean"] == pytest.approx(0.3)
    assert results["base"]["a"]["half_width"] == pytest.approx(0.0, abs=1e-12)  # identical runs: zero width


# ---------------------------------------------------------------- routing


def test_perfect_router_scores_one():
    truth = np.repeat([0, 1, 2, 3], 25)
    report = routing_report(truth, truth, num_routes=4)
    assert report["purity"] == 1.0 and report["nmi"] == pytest.approx(1.0) and report["ari"] == pytest.approx(1.0)
    assert report["confusion"] == (np.eye(4, dtype=int) * 25).tolist()
    assert report["route_shares"] == [0.25] * 4 and report["perplexity"] == pytest.approx(4.0)


def test_permuted_routes_still_score_one():
    truth = np.tile([0, 1, 2], 20)
    permutation = np.array([2, 0, 1])
    report = routing_report(torch.as_tensor(permutation[truth]), truth.tolist(), num_routes=3)
    assert report["purity"] == 1.0 and report["nmi"] == pytest.approx(1.0) and report["ari"] == pytest.approx(1.0)
    expected = np.zeros((3, 3), dtype=int)
    expected[np.arange(3), permutation] = 20
    assert report["confusion"] == expected.tolist()


def test_collapsed_router_purity_is_majority_share_and_perplexity_one():
    truth = np.array([0] * 50 + [1] * 30 + [2] * 20)
    report = routing_report(np.zeros(100, dtype=int), truth, num_routes=4)
    assert report["purity"] == pytest.approx(0.5)
    assert report["perplexity"] == pytest.approx(1.0)
    assert report["nmi"] == pytest.approx(0.0) and report["ari"] == pytest.approx(0.0)
    assert report["route_shares"] == [1.0, 0.0, 0.0, 0.0]
    assert report["confusion"] == [[50, 0, 0, 0], [30, 0, 0, 0], [20, 0, 0, 0]]


def test_route_perplexity_and_merged_distributions():
    # 4 distributions, 2 routes: the router splits text from symbolic but merges the two tasks.
    truth = np.array([0] * 40 + [1] * 40 + [2] * 10 + [3] * 10)
    routes = truth % 2
    report = routing_report(routes, truth, num_routes=3, num_domains=5)
    assert np.asarray(report["confusion"]).shape == (5, 3)
    assert report["purity"] == pytest.approx(0.8)  # each route: 40 of its 50 inputs share one distribution
    assert report["perplexity"] == pytest.approx(2.0)  # shares [0.5, 0.5, 0]
    assert 0 < report["nmi"] < 1 and 0 < report["ari"] < 1
    shares = routing_report([0, 0, 1, 2], [0, 0, 0, 0], num_routes=3)
    assert shares["perplexity"] == pytest.approx(2 ** 1.5)  # exp(entropy of [1/2, 1/4, 1/4])


@pytest.mark.parametrize("routes, truth, num_routes", [
    ([0, 1], [0, 1, 1], 2),  # not paired
    ([0, 2], [0, 1], 2),  # route out of range
    ([[0, 1]], [[0, 1]], 2),  # not 1-D
    ([0, -1], [0, 1], 2),  # negative
    ([0.5, 1], [0, 1], 2),  # not integers
    ([], [], 2),  # empty
])
def test_routing_report_rejects_bad_input(routes, truth, num_routes):
    with pytest.raises(ValueError):
        routing_report(routes, truth, num_routes)


# ---------------------------------------------------------------- independence


def cka_reference(x, y):
    """Kornblith et al.'s HSIC form with an explicit centring matrix, float64."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def unbiased_hsic_reference(k, l):
    """Song et al. (2012) unbiased HSIC as the U-statistic over ordered quadruples of distinct indices."""
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


@pytest.mark.parametrize("n, dx, dy", [(40, 6, 9), (12, 30, 50)])  # feature-space and Gram-space branches
def test_linear_cka_matches_reference_and_invariances(n, dx, dy):
    generator = rng(n)
    x = generator.normal(size=(n, dx)) + 3.0
    y = x @ generator.normal(size=(dx, dy)) + generator.normal(size=(n, dy))
    value = linear_cka(x, y)
    assert value == pytest.approx(cka_reference(x, y), rel=1e-10)
    assert 0.0 < value < 1.0
    assert linear_cka(x, x) == pytest.approx(1.0)
    orthogonal, _ = np.linalg.qr(generator.normal(size=(dy, dy)))
    assert linear_cka(x, 7.5 * y @ orthogonal) == pytest.approx(value, rel=1e-10)
    assert linear_cka(torch.tensor(x, dtype=torch.float64), y.tolist()) == pytest.approx(value, rel=1e-12)
    # Not invariant to arbitrary invertible maps: an anisotropic scaling changes it.
    assert linear_cka(x, y * np.linspace(0.1, 10.0, dy)) != pytest.approx(value, rel=1e-3)


def test_linear_cka_near_zero_for_independent_features():
    generator = rng(1)
    assert abs(linear_cka(generator.normal(size=(5000, 8)), generator.normal(size=(5000, 8)))) < 0.01


def test_debiased_cka_matches_u_statistic_and_removes_small_n_bias():
    generator = rng(2)
    x, y = generator.normal(size=(7, 3)), generator.normal(size=(7, 4))
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, l = xc @ xc.T, yc @ yc.T
    expected = unbiased_hsic_reference(k, l) / math.sqrt(unbiased_hsic_reference(k, k) * unbiased_hsic_reference(l, l))
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, rel=1e-9)

    x, y = generator.normal(size=(100, 400)), generator.normal(size=(100, 400))
    assert linear_cka(x, y) > 0.5  # plain linear CKA: large for independent features when n < d
    assert abs(linear_cka(x, y, debiased=True)) < 0.05
    assert linear_cka(x, 3.0 * x, debiased=True) == pytest.approx(1.0)


def test_linear_cka_rejects_bad_shapes_and_flags_constant_features():
    generator = rng(3)
    with pytest.raises(ValueError, match="paired rows"):
        linear_cka(generator.normal(size=(10, 4)), generator.normal(size=(11, 4)))
    with pytest.raises(ValueError):
        linear_cka(generator.normal(size=10), generator.normal(size=10))
    with pytest.raises(ValueError):
        linear_cka(generator.normal(size=(1, 4)), generator.normal(size=(1, 4)))
    with pytest.raises(ValueError):
        linear_cka(generator.normal(size=(3, 4)), generator.normal(size=(3, 4)), debiased=True)
    assert math.isnan(linear_cka(np.ones((10, 4)), generator.normal(size=(10, 4))))


def test_module_independence_reports_cka_and_the_training_mi():
    generator = rng(4)
    invariant, routed, other = (generator.normal(size=(64, 16)) for _ in range(3))
    report = module_independence(torch.tensor(invariant), routed, {"domain_0": invariant, "domain_1": other})
    assert report["n"] == 64 and list(report["cka"]) == ["routed", "domain_0", "domain_1"]
    assert report["cka"]["domain_0"] == pytest.approx(1.0)
    assert report["cka"]["routed"] == pytest.approx(linear_cka(invariant, routed))
    assert report["cka_debiased"]["routed"] == pytest.approx(linear_cka(invariant, routed, debiased=True))
    expected_mi = float(mutual_information(torch.tensor(invariant), torch.tensor(routed)))
    assert report["mi"]["routed"] == pytest.approx(expected_mi, rel=1e-5)
    assert report["mi"]["domain_0"] > report["mi"]["routed"]
    named = module_independence(invariant, domain_modules=[routed, other])
    assert list(named["cka"]) == ["domain_0", "domain_1"]
    with pytest.raises(ValueError, match="pair up"):
        module_independence(invariant, routed[:10])
    with pytest.raises(ValueError):
        module_independence(invariant)


def test_independence_table_layout():
    generator = rng(5)
    states = lambda n: generator.normal(size=(n, 8))  # noqa: E731
    table = independence_table({
        "acre/text/iid": {"invariant": states(20), "domain": states(20), "domain_modules": [states(20), states(20)]},
        "raven/text/center_single": {"invariant": states(30), "domain": states(30)},
    })
    assert table["splits"] == ["acre/text/iid", "raven/text/center_single"]
    assert table["modules"] == ["routed", "domain_0", "domain_1"] and table["n"] == [20, 30]
    for metric in ("cka", "cka_debiased", "mi"):
        values = np.asarray(table[metric])
        assert values.shape == (2, 3)
        assert np.isfinite(values[0]).all() and np.isfinite(values[1, 0]) and np.isnan(values[1, 1:]).all()
    with pytest.raises(ValueError, match="expected keys"):
        independence_table({"a": {"invariant": states(5), "domian": states(5)}})


# ---------------------------------------------------------------- results fixtures

SPLITS = {
    "acre/text/iid": {"ood": False, "chance": 1 / 3, "majority": 0.41},
    "acre/text/comp": {"ood": True, "chance": 1 / 3, "majority": 0.40},
    "raven/symbolic/center_single": {"ood": False, "chance": 1 / 8},
    "raven/symbolic/distribute_four": {"ood": True, "chance": 1 / 8},
}


def make_results():
    generator = rng(6)
    runs = {system: {split: generator.uniform(0.2, 0.9, size=3).tolist() for split in SPLITS}
            for system in ("base", "fine-tuned", "ICLM", "ICLM | oracle router")}
    runs["base"] = {split: [0.25] for split in SPLITS}  # one run: no interval
    del runs["fine-tuned"]["acre/text/comp"]  # a missing cell
    return summarise_runs(runs)


# ---------------------------------------------------------------- figures


def read_png(path, figsize):
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(figsize[1] * DPI), round(figsize[0] * DPI))
    assert image.std() > 0.05  # something was drawn
    return image


def test_plot_accuracy_by_split_writes_png(tmp_path):
    path = plot_accuracy_by_split(make_results(), SPLITS, tmp_path / "figures" / "accuracy.png", figsize=(9, 5))
    assert path == tmp_path / "figures" / "accuracy.png" and path.stat().st_size > 0
    read_png(path, (9, 5))
    only_in_distribution = {split: meta for split, meta in SPLITS.items() if not meta["ood"]}
    results = {system: {s: v for s, v in by_split.items() if s in only_in_distribution} for system, by_split in make_results().items()}
    assert plot_accuracy_by_split(results, only_in_distribution, tmp_path / "id.png").stat().st_size > 0
    with pytest.raises(ValueError, match="without metadata"):
        plot_accuracy_by_split(make_results(), only_in_distribution, tmp_path / "bad.png")


def test_plot_router_confusion_writes_png(tmp_path):
    truth = np.repeat([0, 1, 2, 3], 10)
    report = routing_report(truth % 2, truth, num_routes=2)
    labels = ["acre/text", "acre/symbolic", "raven/text", "raven/symbolic"]
    read_png(plot_router_confusion(report, labels, tmp_path / "confusion.png", figsize=(6, 4)), (6, 4))
    with pytest.raises(ValueError, match="labels"):
        plot_router_confusion(report, labels[:3], tmp_path / "bad.png")


def test_plot_router_embeddings_writes_png(tmp_path):
    generator = rng(7)
    truth = np.repeat([0, 1, 2, 3], 15)
    embeddings = generator.normal(size=(60, 16)) + 4.0 * np.eye(16)[truth]
    routes = torch.as_tensor(truth % 2)
    path = plot_router_embeddings(embeddings, truth, routes, ["a/text", "a/sym", "r/text", "r/sym"], tmp_path / "emb.png",
                                  figsize=(10, 4.5))
    read_png(path, (10, 4.5))
    with pytest.raises(ValueError, match="pair up"):
        plot_router_embeddings(embeddings[:10], truth, routes, ["a", "b", "c", "d"], tmp_path / "bad.png")


@pytest.mark.parametrize("cka", ["cka", "cka_debiased"])
def test_plot_independence_heatmap_writes_png(tmp_path, cka):
    generator = rng(8)
    states = lambda: generator.normal(size=(24, 8))  # noqa: E731
    table = independence_table({
        "acre/text/iid": {"invariant": states(), "domain": states(), "domain_modules": [states(), states()]},
        "acre/text/comp": {"invariant": states(), "domain": states()},
    })
    read_png(plot_independence_heatmap(table, tmp_path / f"{cka}.png", cka=cka, figsize=(10, 3.5)), (10, 3.5))
    with pytest.raises(ValueError):
        plot_independence_heatmap(table, tmp_path / "bad.png", cka="rbf")


# ---------------------------------------------------------------- table


def test_results_markdown_lists_every_system_and_split():
    results = make_results()
    table = results_markdown(results, SPLITS)
    lines = table.strip().splitlines()
    header = lines[0]
    for split, meta in SPLITS.items():
        assert f"{'OOD' if meta['ood'] else 'ID'}: {split}" in header
    # in-distribution columns first
    assert header.index("ID: raven/symbolic/center_single") < header.index("OOD: acre/text/comp")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(rows) == {"base", "fine-tuned", "ICLM", "ICLM \\| oracle router", "*chance*", "*majority*"}
    assert all(line.replace("\\|", "").count("|") == len(SPLITS) + 2 for line in lines)  # same column count everywhere
    assert "0.250 (n=1)" in rows["base"]
    assert "—" in rows["fine-tuned"]  # missing acre/text/comp
    iclm = results["ICLM"]["acre/text/iid"]
    assert f"{iclm['mean']:.3f} ± {iclm['half_width']:.3f}" in rows["ICLM"]
    assert rows["*chance*"].count("0.333") == 2 and rows["*chance*"].count("0.125") == 2
    assert "0.410" in rows["*majority*"] and rows["*majority*"].count("—") == 2
    best = max(by_split["acre/text/iid"]["mean"] for by_split in results.values())
    assert f"**{best:.3f}**" in table
    assert "33.3" in results_markdown(results, SPLITS, percent=True)


def test_results_markdown_adds_the_answer_set_row_when_known():
    splits = {name: dict(meta) for name, meta in SPLITS.items()}
    assert "answer-set only" not in results_markdown(make_results(), splits)
    splits["raven/symbolic/center_single"]["answer_set_only"] = 1.0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in results_markdown(make_results(), splits).splitlines()}
    assert rows["*answer-set only*"].count("1.000") == 1 and rows["*answer-set only*"].count("—") == len(SPLITS) - 1


def test_group_summary_and_markdown():
    from iclm.analysis import group_summary, groups_markdown

    per_seed = {"a": {0: {"x": 0.5, "y": 0.7}, 1: {"x": 0.6, "y": 0.8}},
                "b": {0: {"x": 0.1, "y": 0.3}, 1: {"x": 0.2}}}  # b lacks y in seed 1
    groups = {"both": ["x", "y"], "only x": ["x"]}
    summary = group_summary(per_seed, groups)
    assert summary["a"]["both"]["values"] == pytest.approx([0.6, 0.7])
    assert summary["a"]["only x"]["mean"] == pytest.approx(0.55)
    assert "both" not in summary["b"] and summary["b"]["only x"]["values"] == pytest.approx([0.1, 0.2])
    baselines = {"x": {"chance": 0.25, "majority": 0.4, "answer_set_only": 1.0}, "y": {"chance": 0.5, "majority": 0.5}}
    table = groups_markdown(summary, groups, baselines)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "both (2)" in table and "only x (1)" in table
    assert "65.0 ±" in rows["a"] and "—" in rows["b"]
    assert rows["*chance*"].endswith("| 37.5 | 25.0 |") and rows["*best context-blind rule*"].endswith("| 75.0 | 100.0 |")


def test_plot_learning_curves_writes_png(tmp_path):
    from iclm.analysis import plot_learning_curves

    curves = {"iclm": {"steps": [0, 50, 100], "splits": {"acre/text/iid": [[0.3, 0.35], [0.5, 0.55], [0.7, 0.6]],
                                                          "raven/symbolic/center_single": [[0.1], [0.2], [0.3]]}},
              "fine-tuned": {"steps": [0, 100], "splits": {"acre/text/iid": [[0.3, 0.3], [0.6, 0.62]]}}}
    splits = {name: dict(meta) for name, meta in SPLITS.items()}
    splits["raven/symbolic/center_single"]["answer_set_only"] = 1.0
    read_png(plot_learning_curves(curves, splits, tmp_path / "curves.png", figsize=(9, 3.5)), (9, 3.5))
    with pytest.raises(ValueError, match="without metadata"):
        plot_learning_curves({"x": {"steps": [0], "splits": {"nowhere": [[0.1]]}}}, splits, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_learning_curves({}, splits, tmp_path / "bad.png")
