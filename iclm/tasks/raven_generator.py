"""A RAVEN problem generator (after Zhang et al., CVPR 2019) and a rule-based solver to validate it.

The paper tests RAVEN out of distribution on configurations missing from the published text
files, so they are generated here following RAVEN's rules:

* each component gets one rule per attribute group, drawn uniformly from RAVEN's table
  (:data:`RULE_TABLE`): Number/Position, Type, Size, Color; each rule acts row-wise
  (Constant, Progression by +-1/+-2, Arithmetic: third = first +- second (Size adds 1 more,
  as in RAVEN; Position: union/difference), Distribute_Three: three values permuted over rows);
  a rule set impossible for a layout is redrawn (RAVEN's pruning);
* Angle is noise: one random angle per row and component;
* the 7 distractors each change one attribute of the answer (Number, Position -- not under a
  Number rule, where positions are random -- Type, Size, Color), with values not used before;
* the answer's position among the 8 candidates is uniform.

Those ``candidates="original"`` answer sets have RAVEN's context-blind shortcut: every distractor
differs from the answer in one attribute, so the answer is the candidate that agrees most with
the others (:func:`iclm.analysis.baselines.answer_set_only` finds it without reading the
context). ``candidates="balanced"`` builds I-RAVEN's answer set instead (Hu et al., AAAI 2021,
"Stratified Rule-Aware Network"): attribute bisection, a 3-level tree whose every level changes
one attribute (of one component) of all the candidates so far to one new value, so the 8
candidates are the answer with every subset of 3 changes. Each changed attribute then takes each
of its two values on exactly 4 candidates, no candidate agrees with the others more than another
does, and a context-blind pick is at chance. Attributes: Type, Size, Color of each component,
and Number or Position (at most one of them per component; Position not under a Number rule,
where positions are free) of multi-slot layouts; center_single thus always uses Type, Size and
Color. New values that a rule could also explain are redrawn, so again exactly one candidate is
consistent.

Simplification: every entity of a panel shares Type/Size/Color (RAVEN's "uniform" layouts);
RAVEN also draws non-uniform distribute_four panels where Constant attributes vary per entity.

:func:`consistent_candidates` is a blind solver: it knows only the rule *families*, and accepts
a candidate when, for every component and attribute group, some rule of the family holds on all
three rows completed by that candidate. The generator redraws a problem until exactly one
candidate -- the answer -- is consistent, so every generated problem is well posed.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from .raven_format import CONFIGS, Layout, Panel, check_config, render_problem

GROUPS = ("Number/Position", "Type", "Size", "Color")
STEPS = (-2, -1, 1, 2)
SIGNS = (1, -1)
ENTITY_INDEX = {"Size": 0, "Color": 1, "Type": 2}  # position in an (size, color, type, angle) entity
ARITHMETIC_OFFSET = {"Size": 1, "Color": 0, "Number": 0}  # RAVEN: size_3 = size_1 +- size_2 +- 1
NUM_ANGLES = 8
MAX_ATTEMPTS = 1000
CANDIDATE_STYLES = ("original", "balanced")
BALANCED_LEVELS = 3
BALANCED_ATTEMPTS = 20  # value draws per matrix before the matrix is redrawn

# RAVEN's rule table (const.RULE_ATTR): per group, (rule, attribute, parameters); drawn uniformly.
RULE_TABLE: dict[str, tuple[tuple[str, str, tuple[int, ...]], ...]] = {
    "Number/Position": (
        ("Progression", "Number", STEPS),
        ("Progression", "Position", STEPS),
        ("Arithmetic", "Number", SIGNS),
        ("Arithmetic", "Position", SIGNS),
        ("Distribute_Three", "Number", (0,)),
        ("Distribute_Three", "Position", (0,)),
        ("Constant", "Position", (0,)),
    ),
    "Type": (
        ("Progression", "Type", STEPS),
        ("Distribute_Three", "Type", (0,)),
        ("Constant", "Type", (0,)),
    ),
    "Size": (
        ("Progression", "Size", STEPS),
        ("Arithmetic", "Size", SIGNS),
        ("Distribute_Three", "Size", (0,)),
        ("Constant", "Size", (0,)),
    ),
    "Color": (
        ("Progression", "Color", STEPS),
        ("Arithmetic", "Color", SIGNS),
        ("Distribute_Three", "Color", (0,)),
        ("Constant", "Color", (0,)),
    ),
}


@dataclass(frozen=True)
class Rule:
    """A row-wise rule on one attribute; ``value`` is the step (Progression) or sign (Arithmetic)."""

    name: str
    attr: str
    value: int = 0

    def holds(self, values: Sequence, slots: int) -> bool:
        """Whether the rule holds on the 9 panel values (row-major) of its attribute."""
        if any(value is None for value in values):
            return False
        rows = [values[0:3], values[3:6], values[6:9]]
        if self.name == "Constant":
            return all(a == b == c for a, b, c in rows)
        if self.name == "Distribute_Three":
            trio = set(rows[0])
            return (
                len(trio) == 3
                and all(set(row) == trio for row in rows)
                and all(len({row[column] for row in rows}) == 3 for column in range(3))
            )
        if self.name == "Progression":
            if self.attr == "Position":
                return all(b == _shift(a, self.value, slots) and c == _shift(b, self.value, slots) for a, b, c in rows)
            return all(b - a == self.value and c - b == self.value for a, b, c in rows)
        if self.attr == "Position":  # Arithmetic on positions: union / difference
            return all(c == (a | b if self.value > 0 else a - b) for a, b, c in rows)
        return all(c == _arithmetic(a, b, self.value, self.attr) for a, b, c in rows)


@functools.lru_cache(maxsize=None)
def hypotheses(group: str) -> tuple[Rule, ...]:
    """Every rule (with every parameter) of a group: what the blind solver may assume."""
    return tuple(Rule(name, attr, value) for name, attr, params in RULE_TABLE[group] for value in params)


@dataclass(frozen=True)
class Problem:
    """A generated problem in structured form, renderable in the text and symbolic formats."""

    config: str
    rules: tuple  # per component: (Number/Position, Type, Size, Color) rules
    context: tuple  # 8 panels, row-major
    candidates: tuple  # 8 panels
    answer: int  # index of the right candidate

    def record(self, rendering: str) -> dict:
        return render_problem(self.context, self.candidates, self.answer, self.config, rendering)


def _shift(positions: frozenset, step: int, slots: int) -> frozenset:
    return frozenset((p + step) % slots for p in positions)


def _arithmetic(first: int, second: int, sign: int, attr: str) -> int:
    offset = ARITHMETIC_OFFSET[attr]
    return first + second + offset if sign > 0 else first - second - offset


@functools.lru_cache(maxsize=None)
def _subsets(slots: int, count: int) -> tuple[frozenset, ...]:
    return tuple(frozenset(c) for c in itertools.combinations(range(slots), count))


# ---------------------------------------------------------------------------------------------
# Solver


def panel_values(panels: Sequence[Panel], component: int, attr: str) -> list:
    """One attribute of one component over panels: count, occupied slot set, or the shared value
    (``None`` when the entities of a panel disagree, which no rule accepts)."""
    values = []
    for panel in panels:
        entities = [(slot, entity) for slot, entity in enumerate(panel[component]) if entity is not None]
        if attr == "Number":
            values.append(len(entities))
        elif attr == "Position":
            values.append(frozenset(slot for slot, _ in entities))
        else:
            shared = {entity[ENTITY_INDEX[attr]] for _, entity in entities}
            values.append(shared.pop() if len(shared) == 1 else None)
    return values


def infer_rules(panels: Sequence[Panel], config: str) -> list[dict[str, list[Rule]]]:
    """Per component and group, the rules that hold on a complete 3x3 matrix (9 panels)."""
    check_config(config)
    inferred = []
    for component, layout in enumerate(CONFIGS[config]):
        slots = len(layout.slots)
        cache: dict[str, list] = {}
        found = {}
        for group in GROUPS:
            found[group] = [
                rule
                for rule in hypotheses(group)
                if rule.holds(cache.setdefault(rule.attr, panel_values(panels, component, rule.attr)), slots)
            ]
        inferred.append(found)
    return inferred


def consistent_candidates(context: Sequence[Panel], candidates: Sequence[Panel], config: str) -> list[int]:
    """Indices of the candidates that complete the matrix consistently with some rule per group."""
    if len(context) != 8:
        raise ValueError(f"A RAVEN problem has 8 context panels, got {len(context)}.")
    return [
        index
        for index, candidate in enumerate(candidates)
        if all(all(found.values()) for found in infer_rules(list(context) + [candidate], config))
    ]


def solve(context: Sequence[Panel], candidates: Sequence[Panel], config: str) -> Optional[int]:
    """The only consistent candidate, or ``None`` when none or several are."""
    consistent = consistent_candidates(context, candidates, config)
    return consistent[0] if len(consistent) == 1 else None


# ---------------------------------------------------------------------------------------------
# Sampling


def _latin(trio: list, rng: random.Random) -> list[list]:
    """Three rows that permute ``trio`` so that every column also holds the three values."""
    shifts = [trio, trio[1:] + trio[:1], trio[2:] + trio[:2]]
    return [shifts[0]] + (shifts[1:] if rng.random() < 0.5 else shifts[:0:-1])


def _numeric_rows(rule: Rule, low: int, high: int, rng: random.Random) -> Optional[list[list[int]]]:
    """3x3 values of a numeric attribute in [low, high] under ``rule``; None if impossible."""
    values = range(low, high + 1)
    if rule.name == "Constant":
        return [[x] * 3 for x in (rng.randint(low, high) for _ in range(3))]
    if rule.name == "Distribute_Three":
        return _latin(rng.sample(values, 3), rng) if len(values) >= 3 else None
    if rule.name == "Progression":
        starts = [v for v in values if low <= v + 2 * rule.value <= high]
        if not starts:
            return None
        return [[s, s + rule.value, s + 2 * rule.value] for s in (rng.choice(starts) for _ in range(3))]
    pairs = [(a, b) for a in values for b in values if low <= _arithmetic(a, b, rule.value, rule.attr) <= high]
    if not pairs:
        return None
    rows = []
    for _ in range(3):
        first = rng.choice(sorted({a for a, _ in pairs}))
        second = rng.choice([b for a, b in pairs if a == first])
        rows.append([first, second, _arithmetic(first, second, rule.value, rule.attr)])
    return rows


def _random_set(slots: int, low: int, high: int, rng: random.Random) -> frozenset:
    return rng.choice(_subsets(slots, rng.randint(low, high)))


def _position_rows(rule: Rule, slots: int, rng: random.Random) -> Optional[list[list[frozenset]]]:
    """3x3 occupied-slot sets under a Number/Position rule; None if impossible for the layout.

    Count limits follow RAVEN's constraints (e.g. a Progression on positions moves at most
    ``slots - 2|step|`` entities; a set difference starts from at least half the slots)."""
    if rule.attr == "Number":
        counts = _numeric_rows(rule, 1, slots, rng)
        return None if counts is None else [[rng.choice(_subsets(slots, c)) for c in row] for row in counts]
    if rule.name == "Constant":
        return [[s] * 3 for s in (_random_set(slots, 1, slots, rng) for _ in range(3))]
    if rule.name == "Progression":
        if slots - 2 * abs(rule.value) < 1:
            return None
        rows = []
        for _ in range(3):
            first = _random_set(slots, 1, slots - 2 * abs(rule.value), rng)
            rows.append([first, _shift(first, rule.value, slots), _shift(first, 2 * rule.value, slots)])
        return rows
    if rule.name == "Distribute_Three":
        counts = [k for k in range(1, slots) if len(_subsets(slots, k)) >= 3]
        return _latin(rng.sample(_subsets(slots, rng.choice(counts)), 3), rng) if counts else None
    low, high = (1, slots - 1) if rule.value > 0 else ((slots + 1) // 2, slots - 1)
    if low > high:
        return None
    rows = []
    for _ in range(3):
        first = _random_set(slots, low, high, rng)
        while True:  # union: second not inside first; difference: first not inside second
            second = _random_set(slots, low, high, rng)
            if (rule.value > 0 and not second <= first) or (rule.value < 0 and not first <= second):
                break
        rows.append([first, second, first | second if rule.value > 0 else first - second])
    return rows


def _draw(group: str, layout: Layout, rng: random.Random) -> tuple[Rule, list]:
    """A rule of ``group`` drawn uniformly from RAVEN's table among those possible on ``layout``
    (RAVEN's pruning; groups are independent, so redrawing one group alone is equivalent), and
    its 3x3 values."""
    for _ in range(MAX_ATTEMPTS):
        name, attr, params = rng.choice(RULE_TABLE[group])
        rule = Rule(name, attr, rng.choice(params))
        if group == "Number/Position":
            rows = _position_rows(rule, len(layout.slots), rng)
        else:
            rows = _numeric_rows(rule, *layout.range(attr.lower()), rng)
        if rows is not None:
            return rule, rows
    raise RuntimeError(f"No {group} rule fits the {layout.name} layout.")


def _sample_component(layout: Layout, rng: random.Random) -> tuple[tuple, list]:
    """The rules of one component and its 9 states (row-major)."""
    drawn = {group: _draw(group, layout, rng) for group in GROUPS}
    positions = drawn["Number/Position"][1]
    values = {group: drawn[group][1] for group in ("Size", "Color", "Type")}
    angles = [rng.randrange(NUM_ANGLES) for _ in range(3)]
    states = []
    for row in range(3):
        for column in range(3):
            entity = (
                values["Size"][row][column],
                values["Color"][row][column],
                values["Type"][row][column],
                angles[row],
            )
            states.append(
                tuple(entity if slot in positions[row][column] else None for slot in range(len(layout.slots)))
            )
    return tuple(drawn[group][0] for group in GROUPS), states


def _distractors(answer: Panel, rules: tuple, config: str, rng: random.Random) -> list[Panel]:
    """Seven panels, each changing one attribute of the answer to a value not used before."""
    pools: dict[tuple[int, str], list] = {}
    for component, layout in enumerate(CONFIGS[config]):
        slots = len(layout.slots)
        occupied = frozenset(slot for slot, entity in enumerate(answer[component]) if entity is not None)
        if slots > 1:
            pools[(component, "Number")] = [k for k in range(1, slots + 1) if k != len(occupied)]
            if rules[component][0].attr != "Number":  # under a Number rule positions are free
                pools[(component, "Position")] = [s for s in _subsets(slots, len(occupied)) if s != occupied]
        entity = next(e for e in answer[component] if e is not None)
        for attr, index in ENTITY_INDEX.items():
            low, high = layout.range(attr.lower())
            pools[(component, attr)] = [v for v in range(low, high + 1) if v != entity[index]]
    for pool in pools.values():
        rng.shuffle(pool)
    used_sets: set = set()
    distractors = []
    while len(distractors) < 7:
        keys = [key for key, pool in pools.items() if pool]
        component, attr = rng.choice(keys)
        value = pools[(component, attr)].pop()
        old = answer[component]
        entity = next(e for e in old if e is not None)
        if attr == "Number":  # a new count, at random positions not drawn before
            choices = [s for s in _subsets(len(old), value) if s not in used_sets]
            value = rng.choice(choices)
            used_sets.add(value)
            if len(choices) > 1:
                pools[(component, attr)].append(len(value))
        if attr in ("Number", "Position"):
            new = tuple(entity if slot in value else None for slot in range(len(old)))
        else:
            index = ENTITY_INDEX[attr]
            new = tuple(None if e is None else e[:index] + (value,) + e[index + 1 :] for e in old)
        distractors.append(answer[:component] + (new,) + answer[component + 1 :])
    return distractors


def _with_change(panel: Panel, key: tuple[int, str], value) -> Panel:
    """``panel`` with one attribute of one component set to ``value`` (a slot set for Number and
    Position: the panel's shared entity moved there)."""
    component, attr = key
    old = panel[component]
    entity = next(e for e in old if e is not None)
    if attr in ("Number", "Position"):
        new = tuple(entity if slot in value else None for slot in range(len(old)))
    else:
        index = ENTITY_INDEX[attr]
        new = tuple(None if e is None else e[:index] + (value,) + e[index + 1 :] for e in old)
    return panel[:component] + (new,) + panel[component + 1 :]


def _balanced_keys(answer: Panel, rules: tuple, config: str) -> list[tuple[int, str]]:
    """The attributes a bisection level may change: those with another allowed value."""
    keys = []
    for component, layout in enumerate(CONFIGS[config]):
        if len(layout.slots) > 1:
            count = sum(entity is not None for entity in answer[component])
            keys.append((component, "Number"))
            if rules[component][0].attr != "Number" and count < len(layout.slots):
                keys.append((component, "Position"))
        for attr in ENTITY_INDEX:
            low, high = layout.range(attr.lower())
            if high > low:
                keys.append((component, attr))
    return keys


def _new_value(answer: Panel, key: tuple[int, str], config: str, rng: random.Random):
    """A value of ``key`` other than the answer's: a slot set of another size (Number), another
    slot set of the same size (Position), or another attribute value."""
    component, attr = key
    layout = CONFIGS[config][component]
    occupied = frozenset(slot for slot, entity in enumerate(answer[component]) if entity is not None)
    if attr == "Number":
        count = rng.choice([k for k in range(1, len(layout.slots) + 1) if k != len(occupied)])
        return rng.choice(_subsets(len(layout.slots), count))
    if attr == "Position":
        return rng.choice([s for s in _subsets(len(layout.slots), len(occupied)) if s != occupied])
    low, high = layout.range(attr.lower())
    current = next(e for e in answer[component] if e is not None)[ENTITY_INDEX[attr]]
    return rng.choice([v for v in range(low, high + 1) if v != current])


def _balanced(
    context: Sequence[Panel], answer: Panel, rules: tuple, config: str, rng: random.Random
) -> Optional[tuple[list[Panel], int]]:
    """I-RAVEN's attribute bisection: (8 candidates, answer index), or None when no draw of new
    values leaves the answer the only consistent candidate."""
    keys = _balanced_keys(answer, rules, config)
    for _ in range(BALANCED_ATTEMPTS):
        levels: list[tuple[int, str]] = []
        for key in rng.sample(keys, len(keys)):  # Number and Position of a component exclude each other
            if len(levels) < BALANCED_LEVELS and not any(
                key[0] == other[0] and {key[1], other[1]} == {"Number", "Position"} for other in levels
            ):
                levels.append(key)
        if len(levels) < BALANCED_LEVELS:
            raise ValueError(f"A {config} answer has fewer than {BALANCED_LEVELS} attributes to bisect on.")
        values = [_new_value(answer, key, config, rng) for key in levels]
        order = list(range(2**BALANCED_LEVELS))  # bit l of a leaf: level l changed
        rng.shuffle(order)
        candidates = []
        for leaf in order:
            panel = answer
            for level, (key, value) in enumerate(zip(levels, values)):
                if leaf >> level & 1:
                    panel = _with_change(panel, key, value)
            candidates.append(panel)
        if consistent_candidates(context, candidates, config) == [order.index(0)]:
            return candidates, order.index(0)
    return None


def generate_problem(config: str, rng: random.Random, candidates: str = "original") -> Problem:
    """One well-posed problem: redrawn until the blind solver accepts exactly the answer.

    ``candidates``: ``"original"`` (RAVEN: each distractor changes one attribute of the answer)
    or ``"balanced"`` (I-RAVEN's attribute bisection, see the module docstring).
    """
    check_config(config)
    if candidates not in CANDIDATE_STYLES:
        raise ValueError(f"Unknown candidates style {candidates!r}; expected one of {', '.join(CANDIDATE_STYLES)}.")
    for _ in range(MAX_ATTEMPTS):
        rules, components = zip(*(_sample_component(layout, rng) for layout in CONFIGS[config]))
        panels = [tuple(states[i] for states in components) for i in range(9)]
        if candidates == "balanced":
            drawn = _balanced(panels[:8], panels[8], rules, config, rng)
            if drawn is not None:
                return Problem(config, tuple(rules), tuple(panels[:8]), tuple(drawn[0]), drawn[1])
            continue
        choices = _distractors(panels[8], rules, config, rng)
        answer = rng.randrange(8)
        choices.insert(answer, panels[8])
        if consistent_candidates(panels[:8], choices, config) == [answer]:
            return Problem(config, tuple(rules), tuple(panels[:8]), tuple(choices), answer)
    raise RuntimeError(f"Could not generate a well-posed {config} problem in {MAX_ATTEMPTS} attempts.")


def generate(
    config: str, count: int, seed: int = 0, purpose: str = "test", candidates: str = "original"
) -> list[Problem]:
    """``count`` problems; problem ``i`` depends only on (config, purpose, seed, candidates, i), so
    prefixes agree. The two candidate styles start from the same generator, so problem ``i`` of
    both shows the same matrix unless the balanced draw had to redraw it."""
    check_config(config)
    return [
        generate_problem(config, random.Random(f"raven/{config}/{purpose}/{seed}/{i}"), candidates)
        for i in range(count)
    ]
