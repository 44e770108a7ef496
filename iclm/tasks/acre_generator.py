"""An ACRE problem generator (after Zhang et al., CVPR 2021) and a blicket solver to validate it.

The published ACRE files hold only 2,000 problems per split here (the raw train file is not
carried), too few distinct problems for a small model; this module generates more, in exactly
the raw format that :func:`iclm.tasks.acre.problem_to_records` renders.

What the real raw files show (all six of IID/Comp/Sys val/test, 2,000 problems each; numbers
are IID/val unless said otherwise)
-----------------------------------------------------------------------------------------------

* Every problem has 10 trials: 6 context trials (``light_state`` ``on``/``off``) then 4 queries
  (``no``). Queries carry ``label`` (0 off, 1 undetermined, 2 on) and ``type`` (``direct``,
  ``indirect``, ``screen_off``, ``potential`` -- the paper's direct / indirect / screening-off /
  backward-blocking); queries 9 and 10 also carry ``ref``, the index of a context trial.
* Trials 1-3 are the *habituation* block, always {``on`` [a], ``off`` [b], ``on`` [a, b]} in a
  random order (a listed first in the pair): object a is a blicket, b is not.
* Trials 4-6 are the *evidence* block, on objects disjoint from a and b, one of two families
  (1,000 problems each in IID and Comp; Sys val/test hold only the second):
  ``on_off_off`` -- two ``off`` trials over the remaining non-blickets (a random non-empty part,
  then the rest plus a random part of the first) and one ``on`` trial with the remaining
  candidate blickets plus random non-blicket "noise"; ``on_on_off`` -- one ``off`` trial with all
  remaining non-blickets and two ``on`` trials splitting the remaining candidate blickets the
  same way, each with noise. Hence 18 light-state patterns in IID/Comp, 9 in Sys.
* A problem uses 5-8 distinct objects: 2-3 candidate blickets and 3-5 non-blickets
  (``on_off_off``), 2-4 and 3-4 (``on_on_off``). Object ids: 0-47, all 48 used, in IID and Sys;
  0-23 only in Comp (in ACRE's own code Comp's shift is which appearances the ids get when
  rendered as images; the published text renders every file with the one ``object_dict.json``).
* Queries 7-8 ("cause" queries) hold one object each: one undetermined object when there is
  one (type ``potential``), the others drawn over direct / indirect / screening-off objects
  (screening-off capped at their number minus 1, minus 2 in Comp). Queries 9-10
  ("interventions") are an ``off`` context trial (``ref``) plus one more object or a minimal
  set of candidate blickets that lit the light together; their type is that of the added part
  (a set counts as ``indirect``). About 4% of problems repeat an intervention query, as a
  candidate blicket is listed twice in the pool the two are drawn from; reproduced.

The solver (:func:`query_label`) derives every label from the 6 context trials alone, with the
disjunctive blicket rule (the light is on iff at least one blicket is present): every object of
an ``off`` trial is not a blicket; an ``on`` trial proves that one of its other objects is. A
query is 0 if all its objects are proven non-blickets, 2 if it contains every not-proven-non-
blicket object of some ``on`` trial (so a blicket for sure), else 1. :func:`query_type` likewise
derives the query type from the context (direct: seen alone with the light on, or only with the
light off; screening-off: seen with the light off and on; indirect: the only possible cause in an
``on`` trial of several objects; potential: undetermined). Both reproduce the published ``label``
and ``type`` of all 48,000 queries of the six real files (tested on the four carried here).

The generator draws each problem as above (the sizes and the query-drawing rules are those of
ACRE's published generator, ``src/dataset/blicket.py`` of WellyZhang/ACRE, which the real files
bear out), then derives labels and types with the solver (so they are right by construction, and
the solver is checked against the real data). Differences: the evidence family is drawn at
random per problem (the real files hold exactly half of each), and object order inside a trial
is random where ACRE's follows Python set order (no label depends on it). It is
deterministic: problem ``i`` depends only on (regime, purpose, seed, i), so prefixes agree.
Generated problems whose context equals (as a multiset of trials) that of a real problem in a
given exclusion set -- the real test files, and IID/val, in :func:`real_context_keys` -- are
redrawn, so generated training data never contains a real test problem. The measured
statistics against IID/val are in ``tests/test_tasks_acre_generator.py``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Optional, Sequence

from .acre_files import load_problems, raw_path

REGIMES = ("IID", "Comp", "Sys")
FAMILIES = ("on_off_off", "on_on_off")
# Per family: (candidate blickets low, high), (non-blickets low, high), inclusive.
FAMILY_SIZES = {"on_off_off": ((2, 3), (3, 5)), "on_on_off": ((2, 4), (3, 4))}
REGIME_OBJECTS = {"IID": 48, "Comp": 24, "Sys": 48}  # object ids 0 .. n-1
REGIME_FAMILIES = {"IID": FAMILIES, "Comp": FAMILIES, "Sys": ("on_on_off",)}  # Sys val/test
REGIME_SCREEN_OFF_MARGIN = {"IID": 1, "Comp": 2, "Sys": 1}
QUERY_TYPES = ("direct", "indirect", "screen_off", "potential")
LABELS = (0, 1, 2)  # off, undetermined, on
CONTEXT_TRIALS = 6
QUERIES = 4
MAX_ATTEMPTS = 1000

Trial = dict
Problem = list  # of 10 trials, the raw format


# ---------------------------------------------------------------------------------------------
# Solver: what the 6 context trials prove.


def _context(problem_or_context: Sequence[Trial]) -> list[Trial]:
    context = [trial for trial in problem_or_context if trial["light_state"] in ("on", "off")]
    if not context:
        raise ValueError("An ACRE problem needs context trials (light_state 'on' or 'off').")
    return context


def non_blickets(context: Sequence[Trial]) -> frozenset:
    """Objects seen with the light off: none of them is a blicket."""
    return frozenset(o for trial in _context(context) if trial["light_state"] == "off" for o in trial["objects"])


def on_sets(context: Sequence[Trial]) -> list[frozenset]:
    """Per ``on`` trial, its objects that may be blickets (at least one of them is); an empty set
    means the context contradicts the blicket rule."""
    excluded = non_blickets(context)
    sets = [frozenset(trial["objects"]) - excluded for trial in _context(context) if trial["light_state"] == "on"]
    if any(not candidates for candidates in sets):
        raise ValueError("Inconsistent ACRE context: a light is on with only non-blickets present.")
    return sets


def blickets(context: Sequence[Trial]) -> frozenset:
    """Objects proven to be blickets: the only possible cause of an ``on`` trial."""
    return frozenset(next(iter(s)) for s in on_sets(context) if len(s) == 1)


def set_blickets(context: Sequence[Trial]) -> list[tuple]:
    """Minimal sets of undetermined objects that lit the light together (one of each set is a
    blicket), as sorted tuples: the ``on`` sets with no proven blicket, supersets dropped."""
    known = blickets(context)
    sets = {s for s in on_sets(context) if not s & known}
    return sorted(tuple(sorted(s)) for s in sets if not any(other < s for other in sets))


def query_label(context: Sequence[Trial], objects: Iterable[int]) -> int:
    """0 (off), 1 (undetermined) or 2 (on): the light's state with ``objects``, from the context alone."""
    query, causes = frozenset(objects), on_sets(context)  # (a contradictory context raises here)
    if query <= non_blickets(context):
        return 0
    if any(candidates <= query for candidates in causes):
        return 2
    return 1


def object_roles(context: Sequence[Trial]) -> dict[int, str]:
    """Each context object's query type: ``direct`` (seen alone with the light on, or only with the
    light off), ``screen_off`` (seen with it off and on), ``indirect`` (a proven blicket otherwise),
    ``potential`` (undetermined)."""
    context = _context(context)
    on = [trial["objects"] for trial in context if trial["light_state"] == "on"]
    off = non_blickets(context)
    lit = frozenset(o for objects in on for o in objects)
    direct = {objects[0] for objects in on if len(objects) == 1} | (off - lit)
    proven = blickets(context)
    roles = {}
    for obj in sorted(lit | off):
        if obj in direct:
            roles[obj] = "direct"
        elif obj in off:
            roles[obj] = "screen_off"
        elif obj in proven:
            roles[obj] = "indirect"
        else:
            roles[obj] = "potential"
    return roles


def query_type(context: Sequence[Trial], objects: Sequence[int], ref: Optional[int] = None) -> str:
    """The type of a query: that of its object, or, for an intervention (``ref``: the index of a
    context trial it extends), that of the added object; an added set of objects is ``indirect``."""
    added = set(objects) - (set(context[ref]["objects"]) if ref is not None else set())
    if len(added) != 1:
        return "indirect"
    return object_roles(context).get(added.pop(), "potential")


def check_problem(problem: Problem) -> None:
    """Raise ValueError unless ``problem`` has ACRE's shape and every query's label (and type,
    when given) is what the solver derives from the context."""
    if len(problem) != CONTEXT_TRIALS + QUERIES:
        raise ValueError(f"An ACRE problem has {CONTEXT_TRIALS + QUERIES} trials, got {len(problem)}.")
    context = problem[:CONTEXT_TRIALS]
    if any(trial["light_state"] not in ("on", "off") for trial in context):
        raise ValueError("The first 6 trials of an ACRE problem are context trials ('on'/'off').")
    for number, trial in enumerate(problem[CONTEXT_TRIALS:]):
        if trial["light_state"] != "no":
            raise ValueError(f"Query {number} must have light_state 'no'.")
        label = query_label(context, trial["objects"])
        if trial.get("label") != label:
            raise ValueError(
                f"Query {number} {trial['objects']}: label {trial.get('label')!r}, the context proves {label}."
            )
        kind = query_type(context, trial["objects"], trial.get("ref"))
        if "type" in trial and trial["type"] != kind:
            raise ValueError(
                f"Query {number} {trial['objects']}: type {trial['type']!r}, the context makes it {kind!r}."
            )


# ---------------------------------------------------------------------------------------------
# Sampling


def _covering_pair(items: list, rng: random.Random) -> tuple[list, list]:
    """Two lists covering ``items``: a random non-empty part, then the rest plus a random part of
    the first (at least one object if the rest is empty)."""
    first = rng.sample(items, rng.randint(1, len(items)))
    rest = [item for item in items if item not in first]
    rng.shuffle(rest)
    return first, rest + rng.sample(first, rng.randint(0 if rest else 1, len(first)))


def _noise(non_blickets: list, rng: random.Random) -> list:
    return rng.sample(non_blickets, rng.randint(0, len(non_blickets)))


def _context_trials(family: str, candidates: list, others: list, rng: random.Random) -> list[Trial]:
    """The habituation block (candidates[0] a blicket, others[0] not) then the evidence block."""
    blicket, probe = candidates[0], others[0]
    habituation = [
        {"light_state": "on", "objects": [blicket]},
        {"light_state": "off", "objects": [probe]},
        {"light_state": "on", "objects": [blicket, probe]},
    ]
    remaining, quiet = candidates[1:], others[1:]
    if family == "on_off_off":
        first, second = _covering_pair(quiet, rng)
        evidence = [
            {"light_state": "on", "objects": remaining + _noise(quiet, rng)},
            {"light_state": "off", "objects": first},
            {"light_state": "off", "objects": second},
        ]
    else:
        first, second = _covering_pair(remaining, rng)
        evidence = [
            {"light_state": "on", "objects": first + _noise(quiet, rng)},
            {"light_state": "on", "objects": second + _noise(quiet, rng)},
            {"light_state": "off", "objects": list(quiet)},
        ]
    rng.shuffle(habituation)
    rng.shuffle(evidence)
    return habituation + evidence


def _counts_with_sum(upper: Sequence[int], total: int, rng: random.Random) -> list[int]:
    """Counts in [0, upper[k]] summing to ``total``, drawn one after another (the last by rejection)."""
    if sum(upper) < total:
        raise ValueError(f"Cannot draw {total} queries from at most {list(upper)}.")
    while True:
        counts, left = [], total
        for bound in upper[:-1]:
            counts.append(rng.randint(0, min(bound, left)))
            left -= counts[-1]
        if left <= upper[-1]:
            return counts + [left]


def _cause_queries(context: list[Trial], regime: str, rng: random.Random) -> list[Trial]:
    """Two one-object queries: an undetermined object if any, the rest over direct / indirect /
    screening-off objects (the last capped, as in ACRE, to balance the labels)."""
    by_role: dict[str, list] = {role: [] for role in QUERY_TYPES}
    for obj, role in object_roles(context).items():
        by_role[role].append(obj)
    potential = min(len(by_role["potential"]), 1)
    upper = [
        len(by_role["direct"]),
        len(by_role["indirect"]),
        max(len(by_role["screen_off"]) - REGIME_SCREEN_OFF_MARGIN[regime], 0),
    ]
    counts = _counts_with_sum(upper, 2 - potential, rng) + [potential]
    chosen = [obj for role, count in zip(QUERY_TYPES, counts) for obj in rng.sample(by_role[role], count)]
    rng.shuffle(chosen)
    return [{"light_state": "no", "objects": [obj]} for obj in chosen]


def _intervention_queries(context: list[Trial], rng: random.Random) -> list[Trial]:
    """Two queries adding an object, or a minimal set of candidate blickets, to one ``off`` trial."""
    ref = rng.choice([index for index, trial in enumerate(context) if trial["light_state"] == "off"])
    present = set(context[ref]["objects"])
    roles = object_roles(context)
    outside = [obj for obj in sorted(roles) if obj not in present]
    # Undetermined objects are listed twice (ACRE's weighting, for a balance of labels).
    pool = [(obj,) for obj in outside] + set_blickets(context)
    pool += [(obj,) for obj in outside if roles[obj] == "potential"]
    chosen = rng.sample(pool, 2)
    return [{"light_state": "no", "objects": context[ref]["objects"] + list(added), "ref": ref} for added in chosen]


def _labelled(context: list[Trial], query: Trial) -> Trial:
    labelled = {"light_state": "no", "objects": query["objects"], "label": query_label(context, query["objects"])}
    labelled["type"] = query_type(context, query["objects"], query.get("ref"))
    if "ref" in query:
        labelled["ref"] = query["ref"]
    return labelled


def generate_problem(rng: random.Random, regime: str = "IID") -> Problem:
    """One raw problem (10 trials, the published format with ``label``, ``type`` and ``ref``)."""
    if regime not in REGIMES:
        raise ValueError(f"Unknown ACRE regime {regime!r}; expected one of {', '.join(REGIMES)}.")
    family = rng.choice(REGIME_FAMILIES[regime])
    (low_c, high_c), (low_n, high_n) = FAMILY_SIZES[family]
    n_candidates, n_others = rng.randint(low_c, high_c), rng.randint(low_n, high_n)
    objects = rng.sample(range(REGIME_OBJECTS[regime]), n_candidates + n_others)
    context = _context_trials(family, objects[:n_candidates], objects[n_candidates:], rng)
    queries = _cause_queries(context, regime, rng) + _intervention_queries(context, rng)
    return context + [_labelled(context, query) for query in queries]


def context_key(problem: Problem) -> tuple:
    """A problem's context as a multiset of (light state, object set): equal for two problems that
    show the same evidence, whatever the order of trials and objects."""
    return tuple(sorted((t["light_state"], tuple(sorted(t["objects"]))) for t in problem[:CONTEXT_TRIALS]))


def generate(
    count: int,
    seed: int = 0,
    *,
    regime: str = "IID",
    purpose: str = "train",
    exclude: Iterable[tuple] = (),
) -> list[Problem]:
    """``count`` problems; problem ``i`` depends only on (regime, purpose, seed, i) (and ``exclude``).

    ``exclude``: context keys (:func:`context_key`) a generated problem must not have, e.g.
    :func:`real_context_keys`; a problem that matches one is redrawn from its own generator, and so
    are duplicates of an earlier problem of the same call, so that all problems are distinct.
    """
    if count < 0:
        raise ValueError(f"count must be a non-negative number of problems, got {count}.")
    excluded = set(exclude)
    problems = []
    for index in range(count):
        rng = random.Random(f"acre/{regime}/{purpose}/{seed}/{index}")
        for _ in range(MAX_ATTEMPTS):
            problem = generate_problem(rng, regime)
            key = context_key(problem)
            if key not in excluded:
                break
        else:
            raise RuntimeError(f"Could not draw problem {index} outside the excluded contexts.")
        excluded.add(key)
        problems.append(problem)
    return problems


def real_context_keys(root=None, files: Optional[Sequence[tuple[str, str]]] = None) -> frozenset:
    """Context keys of the real problems that generated training data must avoid: by default every
    ``acre/raw/{IID,Comp,Sys}/{val,test}.json`` present under the data root (the package carries
    IID/val and the three test files)."""
    if files is None:
        files = [(folder, part) for folder in REGIMES for part in ("val", "test")]
        required = False
    else:
        required = True
    keys = set()
    for folder, part in files:
        try:
            path = raw_path(folder, part, root)
        except FileNotFoundError:
            if required:
                raise
            continue
        keys.update(context_key(problem) for problem in load_problems(path))
    return frozenset(keys)


def statistics(problems: Sequence[Problem]) -> dict[str, Counter]:
    """Distributions to compare generated and real problems: query labels and types, objects per
    context trial and per query, distinct objects per problem, light-state patterns, evidence
    family (``on_off_off``: one ``on`` trial among trials 4-6), object ids."""
    stats = {name: Counter() for name in ("label", "type", "context_objects", "query_objects", "problem_objects",
                                          "pattern", "family", "object_id")}
    for problem in problems:
        context = problem[:CONTEXT_TRIALS]
        stats["pattern"][tuple(t["light_state"] for t in problem)] += 1
        lit = sum(t["light_state"] == "on" for t in context[3:])
        stats["family"]["on_off_off" if lit == 1 else "on_on_off"] += 1
        stats["problem_objects"][len({o for t in problem for o in t["objects"]})] += 1
        for trial in problem:
            stats["object_id"].update(trial["objects"])
            if trial["light_state"] == "no":
                stats["label"][trial["label"]] += 1
                stats["type"][trial["type"]] += 1
                stats["query_objects"][len(trial["objects"])] += 1
            else:
                stats["context_objects"][len(trial["objects"])] += 1
    return stats


def shares(counter: Counter) -> dict:
    """A counter's shares, keys sorted."""
    total = sum(counter.values())
    return {key: counter[key] / total for key in sorted(counter, key=str)}
