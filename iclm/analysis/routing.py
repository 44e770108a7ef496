"""How well the unsupervised router's clusters recover the true training distributions.

The router is never told the distribution (text vs symbolic, ACRE vs RAVEN); whether its hard
routes line up with them is the paper's evidence that the domain modules specialise. Purity asks
"is each route dominated by one distribution", NMI and ARI are the permutation-invariant
agreement scores, and the perplexity of the route shares counts the codebook entries in effective
use (1 = the router collapsed onto one module, K = all K used equally).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def as_labels(values, name: str) -> np.ndarray:
    """A 1-D array of non-negative integer labels (accepts lists, numpy arrays and torch tensors)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}.")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels, got minimum {array.min()}.")
    return array.astype(np.int64)


def routing_report(routes, true_domains, num_routes: int, num_domains: int | None = None) -> dict:
    """Router-vs-truth clustering scores for one set of inputs.

    ``routes`` [n] is the module the router picked per input (0..num_routes-1) and ``true_domains``
    [n] the distribution id (0..num_domains-1; default ``max + 1``). Returns plain Python values:

    * ``confusion``: [num_domains][num_routes] counts (rows: true distribution, columns: route);
    * ``purity``: Σ_route max_domain count / n (1 when every route holds a single distribution);
    * ``nmi``, ``ari``: sklearn's normalized mutual information (arithmetic) and adjusted Rand index;
    * ``route_shares``: [num_routes] fraction of inputs per route;
    * ``perplexity``: exp(entropy of ``route_shares``), in [1, num_routes];
    * ``n``, ``num_routes``, ``num_domains``.
    """
    routes = as_labels(routes, "routes")
    truth = as_labels(true_domains, "true_domains")
    if routes.shape != truth.shape:
        raise ValueError(f"routes and true_domains must pair up, got {routes.shape[0]} and {truth.shape[0]} labels.")
    if routes.size == 0:
        raise ValueError("routing_report needs at least one input.")
    if num_routes < 1 or routes.max() >= num_routes:
        raise ValueError(f"routes must lie in [0, {num_routes - 1}] (num_routes={num_routes}), got max {routes.max()}.")
    if num_domains is None:
        num_domains = int(truth.max()) + 1
    elif truth.max() >= num_domains:
        raise ValueError(f"true_domains must lie in [0, {num_domains - 1}], got max {truth.max()}.")

    n = routes.size
    confusion = np.zeros((num_domains, num_routes), dtype=np.int64)
    np.add.at(confusion, (truth, routes), 1)
    shares = confusion.sum(0) / n
    used = shares[shares > 0]
    return {
        "confusion": confusion.tolist(),
        "purity": float(confusion.max(0).sum() / n),
        "nmi": float(normalized_mutual_info_score(truth, routes)),
        "ari": float(adjusted_rand_score(truth, routes)),
        "route_shares": shares.tolist(),
        "perplexity": float(math.exp(-(used * np.log(used)).sum())),
        "n": int(n),
        "num_routes": int(num_routes),
        "num_domains": int(num_domains),
    }
