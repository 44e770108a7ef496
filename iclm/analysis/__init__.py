"""Analysis of the ICLM experiment: statistics over seeds, router clustering, module independence,
figures and the Markdown results table. Pure functions over plain Python / numpy data, so the
experiment runner can save their outputs as JSON and re-plot without re-running models.

Data structures shared by the figures and the table:

* ``results``: ``{system: {split: mean_ci95(scores over seeds)}}`` (see :func:`summarise_runs`);
* ``splits``: ``{split: {"ood": bool, "chance": float, "majority": float (optional)}}``.
"""

from .figures import (plot_accuracy_by_split, plot_independence_heatmap, plot_learning_curves, plot_router_confusion,
                      plot_router_embeddings)
from .independence import independence_table, linear_cka, module_independence
from .routing import routing_report
from .statistics import mean_ci95, summarise_runs, t_quantile_975
from .tables import group_summary, groups_markdown, results_markdown

__all__ = [
    "group_summary",
    "groups_markdown",
    "independence_table",
    "linear_cka",
    "mean_ci95",
    "module_independence",
    "plot_accuracy_by_split",
    "plot_independence_heatmap",
    "plot_learning_curves",
    "plot_router_confusion",
    "plot_router_embeddings",
    "results_markdown",
    "routing_report",
    "summarise_runs",
    "t_quantile_975",
]
