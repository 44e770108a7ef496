"""The stand-in base's pretraining corpus: the skills ACRE and RAVEN need, not their answers.

A base that already looks things up across lines and continues rules across panels leaves fine-tuning only
the task to learn (the regime the paper relies on with a real LLM). Each document is a list of segments
``(text, trained)``: the trained segments (the skill answers) weigh 1 in the loss, every other token
``Recipe.context_weight`` (the base learns the renderings' text as well).

* **ACRE skills.** A generated context of the training distribution (IID regime, purpose ``pretrain``: a stream
  apart from the fine-tuning problems, none sharing its context with a real problem), rendered as the task
  renders it, then auxiliary questions on its objects, answered ``yes``/``no`` from the context alone: was it
  seen with the light off, with the light on, alone with the light on; were all of a set seen with the light off.
  These are the sub-skills of the blicket rule (one-hop lookups across lines), not its answer: the task's query
  ("... -> " after a query's objects, "The state of the light is ") never appears; the context trials' own
  outcomes are only text (context weight).
* **RAVEN skills.** A generated center_single problem (the training configuration; the o.o.d. configurations
  never appear), rendered as the task renders it: continuing a row (panels 3 and 6 from the two before them:
  the row rules) and naming the letter of a given candidate (matching). Panel 9, the task's target, is never
  trained and the task's question ("The answer is ") never appears.
* **Key–value recall.** Random ``key = value`` pairs, then keys: induction-style copying, the generic
  in-context mechanism both tasks build on.

Every document is drawn from a seeded RNG by index, so the corpus is unlimited and reproducible: document ``i``
of a seed is the same wherever it is built.
"""

from __future__ import annotations

import functools
import random
import string
from dataclasses import dataclass, field
from typing import Iterator

Segment = tuple[str, bool]  # (text, trained)


@dataclass
class Document:
    """A corpus document: its segments, its kind and, for ACRE and RAVEN, the problem context it shows (ACRE: the
    generator's :func:`~iclm.tasks.acre_generator.context_key`; RAVEN: the eight context panel lines), for the
    leakage check against the test problems."""

    kind: str
    segments: list[Segment] = field(default_factory=list)
    context: object = None

    def __iadd__(self, segments):
        self.segments += segments
        return self

    def append(self, segment: Segment) -> None:
        self.segments.append(segment)

    def __iter__(self):
        return iter(self.segments)

KINDS = ("acre", "raven", "recall")
MIXTURE = {"acre": 0.6, "raven": 0.25, "recall": 0.15}  # document shares; ACRE's lookups are the slowest to form
ACRE_SKILLS = ("off", "on", "alone")
YES, NO = "yes", "no"
RAVEN_CONFIG = "center_single"
RAVEN_CONTINUED_PANELS = (3, 6)  # rows 1 and 2 completed; row 3's panel 9 is the task's target and is not trained


@functools.lru_cache(maxsize=1)
def _acre_tools():
    from iclm.tasks import acre, acre_generator

    return acre, acre_generator, acre.load_objects(), acre_generator.real_context_keys()


def _object_phrase(objects: list[int], rendering: str, names: dict) -> str:
    if rendering == "symbolic":
        return f"{objects}"
    return "".join(f"A {names[o]['color']} {names[o]['shape']} in {names[o]['material']} is visible. " for o in objects)


def _question(objects: list[int], skill: str, rendering: str, names: dict) -> str:
    subject = _object_phrase(objects, rendering, names)
    if rendering == "symbolic":
        return {"off": f"{subject} off? ", "on": f"{subject} on? ", "alone": f"{subject} alone on? "}[skill]
    return {"off": f"{subject}Seen with the light off? ", "on": f"{subject}Seen with the light on? ",
            "alone": f"{subject}Seen alone with the light on? "}[skill]


def acre_skill_answer(context: list[dict], objects: list[int], skill: str) -> bool:
    """The auxiliary answer from the context trials: ``off``/``on`` -- every object of ``objects`` appears in a trial
    with the light off/on; ``alone`` -- the (single) object was shown alone with the light on."""
    if skill == "alone":
        return any(trial["light_state"] == "on" and trial["objects"] == objects for trial in context)
    state = skill
    return all(any(trial["light_state"] == state and obj in trial["objects"] for trial in context) for obj in objects)


def acre_document(rng: random.Random, rendering: str, questions: int = 16) -> Document:
    """One generated ACRE context (instructions half the time) and ``questions`` answered skill questions."""
    acre, generator, names, exclude = _acre_tools()
    problem = generator.generate_problem(rng, "IID")
    while generator.context_key(problem) in exclude:  # never a real val/test context
        problem = generator.generate_problem(rng, "IID")
    context = list(problem[:generator.CONTEXT_TRIALS])
    record = acre.problem_to_records(context + [dict(problem[-1])], rendering, names)[0]
    lines = [turn["content"] for turn in record["input"][:-1]]
    instructions = len(acre.TEXT_INSTRUCTIONS if rendering == "text" else acre.SYMBOLIC_INSTRUCTIONS)
    if rng.random() < 0.5:
        lines = lines[instructions:]
    document = Document("acre", [("\n".join(lines) + "\n", False)], generator.context_key(problem))
    seen = sorted({obj for trial in context for obj in trial["objects"]})
    unseen = [obj for obj in names if obj not in seen]
    for _ in range(questions):
        skill = rng.choice(ACRE_SKILLS)
        draw = rng.random()
        if skill != "alone" and draw < 0.25:  # a set, as the task's intervention queries
            objects = rng.sample(seen, min(len(seen), rng.choice((2, 3))))
        elif draw < 0.9:
            objects = [rng.choice(seen)]
        else:
            objects = [rng.choice(unseen)]
        answer = acre_skill_answer(context, objects, skill)
        document += [(_question(objects, skill, rendering, names), False), (YES if answer else NO, True), ("\n", False)]
    return document


@functools.lru_cache(maxsize=1)
def _raven_tools():
    from iclm.tasks import raven, raven_generator

    return raven, raven_generator


def _raven_prompt_lines(rng: random.Random, rendering: str) -> list[str]:
    raven, generator = _raven_tools()
    candidates = rng.choice(generator.CANDIDATE_STYLES)
    problem = generator.generate_problem(RAVEN_CONFIG, rng, candidates)
    return problem.record(rendering)["input"]


def raven_document(rng: random.Random, rendering: str) -> Document:
    """One generated center_single problem: panels 1-8 with panels 3 and 6 trained (row continuation), the answer
    set, then "Which letter shows <a candidate>?" with its letter trained (matching)."""
    turns = [turn["content"] for turn in _raven_prompt_lines(rng, rendering)]
    header, panels, answer_set = turns[0], turns[1:9], turns[9:17]
    document = Document("raven", [(header + "\n", False)], "\n".join(panels))
    for number, line in enumerate(panels, start=1):
        if number in RAVEN_CONTINUED_PANELS:
            prefix = f"{number}. "
            document += [(prefix, False), (line[len(prefix):], True), ("\n", False)]
        else:
            document.append((line + "\n", False))
    document.append(("\n".join(answer_set) + "\n", False))
    for _ in range(2):
        chosen = rng.randrange(len(answer_set))
        letter, pattern = answer_set[chosen].split(". ", 1)
        document += [(f"Which letter shows {pattern.strip()}? ", False), (letter, True), ("\n", False)]
    return document


def recall_document(rng: random.Random, pairs: int = 12, queries: int = 6) -> Document:
    """Random ``key = value`` pairs, then keys whose values are trained: induction-style copying."""
    keys = rng.sample([a + b for a in string.ascii_lowercase for b in string.ascii_lowercase], pairs)
    values = [str(rng.randrange(48)) for _ in keys]
    document = Document("recall", [("; ".join(f"{k} = {v}" for k, v in zip(keys, values)) + "\n", False)])
    for _ in range(queries):
        index = rng.randrange(pairs)
        document += [(f"{keys[index]} = ", False), (values[index], True), ("\n", False)]
    return document


def document(seed: int, index: int) -> Document:
    """Document ``index`` of the corpus of ``seed`` (its kind and rendering drawn from the same RNG)."""
    rng = random.Random(f"iclm-skills/{seed}/{index}")
    kind = rng.choices(KINDS, weights=[MIXTURE[k] for k in KINDS])[0]
    rendering = rng.choice(("text", "symbolic"))
    if kind == "acre":
        return acre_document(rng, rendering)
    if kind == "raven":
        return raven_document(rng, rendering)
    return recall_document(rng)


def documents(seed: int, start: int = 0) -> Iterator[Document]:
    index = start
    while True:
        yield document(seed, index)
        index += 1


def text_of(doc: Document) -> str:
    return "".join(text for text, _ in doc)
