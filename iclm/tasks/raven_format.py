"""The text and symbolic RAVEN formats of the ICLM paper: vocabulary, panel rendering and parsing.

Shared by the real-data loader and the generator so that generated problems are written
exactly like the published center_single files (the tests re-render all 2,000 real problems
from their parsed symbolic panels and compare character for character). The wording of the
configurations absent from the published files (``distribute_four``,
``in_center_single_out_center_single``) follows the published converter of the
"Logical-and-abstract-reasoning" project.

Structured form: an entity is ``(size, color, type, angle)`` value indices into the lists
below; a component is a tuple with one slot per layout position (an entity or ``None``); a
panel is a tuple of components (one, or two for out/in).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Optional, Sequence

SIZES = ("tiny", "small", "medium", "large", "huge", "giant")
COLORS = ("red", "orange", "yellow", "lime", "green", "cyan", "blue", "purple", "pink", "white")
# Index 0 is RAVEN's 'none' type, never drawn: symbolic letters count it, so triangle = B.
TYPES = ("none", "triangle", "square", "pentagon", "hexagon", "circle")
ANGLES = ("-135", "-90", "-45", "0", "45", "90", "135", "180")
ATTRIBUTES = ("size", "color", "type", "angle")
VOCABULARY = dict(zip(ATTRIBUTES, (SIZES, COLORS, TYPES, ANGLES)))

INSTRUCTION = (
    "Find the pattern number 9 that completes the sequence. Pick the letter in front of the correct "
    "pattern that logically follows in the sequence from the answer set. Patterns in the sequence are "
    "preceded by a number from 1 to 8. Patterns in the answer set are preceded by a letter from A to H. "
    "Only return the letter in front of the correct pattern."
)
QUESTION = "The answer is "
LETTERS = tuple(string.ascii_uppercase[:8])
OUT_IN_TEXT = "a second figure is displayed inside a first one. "
OUT_IN_RULE = "---------------"

Entity = tuple  # (size, color, type, angle)
Component = tuple  # one Optional[Entity] per slot
Panel = tuple  # one Component per layout


@dataclass(frozen=True)
class Layout:
    """A component's slots (text and symbolic names) and its allowed value ranges (inclusive)."""

    name: str
    slots: tuple[str, ...]
    symbols: tuple[str, ...]
    size: tuple[int, int] = (0, 5)
    color: tuple[int, int] = (0, 9)
    type: tuple[int, int] = (1, 5)

    def range(self, attribute: str) -> tuple[int, int]:
        return getattr(self, attribute)


_CENTER = Layout("center", ("",), ("",))
_GRID4 = Layout(
    "grid4",
    ("top left", "top right", "bottom left", "bottom right"),
    ("TL", "TR", "BL", "BR"),
)
# As in RAVEN's Out_Center_Single: a large figure of fixed colour around the inner one.
_OUT = Layout("out", ("",), ("",), size=(3, 5), color=(0, 0))

CONFIGS: dict[str, tuple[Layout, ...]] = {
    "center_single": (_CENTER,),
    "distribute_four": (_GRID4,),
    "in_center_single_out_center_single": (_OUT, _CENTER),
}


def check_config(config: str) -> str:
    """``config`` if it is a known RAVEN configuration, else a ValueError listing them."""
    if config not in CONFIGS:
        raise ValueError(f"Unknown RAVEN configuration {config!r}; expected one of {', '.join(CONFIGS)}.")
    return config


def _entity_text(entity: Entity, slot: str) -> str:
    size, color, kind, angle = entity
    where = f" in the {slot}" if slot else ""
    return f"a {SIZES[size]} {COLORS[color]} {TYPES[kind]} rotated at {ANGLES[angle]} degrees{where}"


def _entity_symbolic(entity: Entity, symbol: str) -> str:
    letters = ", ".join(string.ascii_uppercase[value] for value in entity)
    return f"({letters},{' ' + symbol if symbol else ''})"


def _component(component: Component, layout: Layout, symbolic: bool) -> str:
    if len(component) != len(layout.slots):
        raise ValueError(f"A {layout.name} component has {len(layout.slots)} slots, got {len(component)}.")
    names = layout.symbols if symbolic else layout.slots
    parts = [
        (_entity_symbolic if symbolic else _entity_text)(entity, name)
        for entity, name in zip(component, names)
        if entity is not None
    ]
    if not parts:
        raise ValueError(f"A {layout.name} component must hold at least one entity.")
    return f"[{', '.join(parts)}] " if symbolic else ", ".join(parts) + ". "


def render_panel(panel: Panel, config: str, rendering: str) -> str:
    """One panel in the text or symbolic format of ``config``."""
    layouts = CONFIGS[check_config(config)]
    if len(panel) != len(layouts):
        raise ValueError(f"A {config} panel has {len(layouts)} components, got {len(panel)}.")
    symbolic = rendering == "symbolic"
    parts = [_component(component, layout, symbolic) for component, layout in zip(panel, layouts)]
    if len(parts) == 1:
        return parts[0] if symbolic else "On an image, " + parts[0]
    outside, inside = parts
    if symbolic:
        return f"{outside}\n{OUT_IN_RULE}\n{inside}\n{OUT_IN_RULE}"
    return f"On an image, {OUT_IN_TEXT}Outside: {outside}Inside: {inside}"


def render_problem(
    context: Sequence[Panel], candidates: Sequence[Panel], answer: int, config: str, rendering: str
) -> dict:
    """An evals-format record: instruction, panels 1-8, candidates A-H, question; ideal = letter."""
    if len(context) != 8 or len(candidates) != 8:
        raise ValueError(
            f"A RAVEN problem has 8 context panels and 8 candidates, got {len(context)} and {len(candidates)}."
        )
    turns = [{"role": "system", "content": INSTRUCTION}]
    turns += [
        {"role": "user", "content": f"{i + 1}. {render_panel(p, config, rendering)}"} for i, p in enumerate(context)
    ]
    turns += [
        {"role": "user", "content": f"{LETTERS[i]}. {render_panel(p, config, rendering)}"}
        for i, p in enumerate(candidates)
    ]
    turns.append({"role": "user", "content": QUESTION})
    return {"input": turns, "choice_strings": list(LETTERS), "ideal": LETTERS[answer]}


_SYMBOLIC_ENTITY = re.compile(r"\(([A-Z]), ([A-Z]), ([A-Z]), ([A-Z]),(?: (TL|TR|BL|BR))?\)")


def _parse_component(text: str, layout: Layout) -> Component:
    if not (text.startswith("[") and text.endswith("] ")):
        raise ValueError(f"Not a symbolic RAVEN component: {text!r}.")
    slots: list[Optional[Entity]] = [None] * len(layout.slots)
    matches = list(_SYMBOLIC_ENTITY.finditer(text))
    if not matches or ", ".join(m.group(0) for m in matches) != text[1:-2]:
        raise ValueError(f"Not a symbolic RAVEN component: {text!r}.")
    for match in matches:
        entity = tuple(ord(letter) - ord("A") for letter in match.groups()[:4])
        if any(value >= len(VOCABULARY[name]) for value, name in zip(entity, ATTRIBUTES)):
            raise ValueError(f"Attribute letter out of range in {text!r}.")
        slot = layout.symbols.index(match.group(5) or "")
        slots[slot] = entity
    return tuple(slots)


def parse_panel(text: str, config: str) -> Panel:
    """Inverse of ``render_panel(..., 'symbolic')``: the structured panel of a symbolic panel string."""
    layouts = CONFIGS[check_config(config)]
    if len(layouts) == 1:
        return (_parse_component(text, layouts[0]),)
    head = f"\n{OUT_IN_RULE}\n"
    if head not in text or not text.endswith(f"\n{OUT_IN_RULE}"):
        raise ValueError(f"Not a symbolic {config} panel: {text!r}.")
    outside, inside = text[: -len(OUT_IN_RULE) - 1].split(head)
    return (_parse_component(outside, layouts[0]), _parse_component(inside, layouts[1]))


def parse_problem(record: dict, config: str = "center_single") -> tuple[list[Panel], list[Panel], int]:
    """(context, candidates, answer index) of a symbolic evals-format RAVEN record."""
    turns = record["input"]
    strip = lambda turn, prefix: turn["content"][len(prefix) + 2 :]  # noqa: E731 - "1. " / "A. "
    context = [parse_panel(strip(turns[1 + i], str(i + 1)), config) for i in range(8)]
    candidates = [parse_panel(strip(turns[9 + i], LETTERS[i]), config) for i in range(8)]
    return context, candidates, LETTERS.index(record["ideal"])


_TEXT_ENTITY = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(TYPES[1:])}) rotated at "
    rf"({'|'.join(map(re.escape, ANGLES))}) degrees(?: in the ({'|'.join(_GRID4.slots)}))?"
)


def _parse_text_component(text: str, layout: Layout) -> Component:
    slots: list[Optional[Entity]] = [None] * len(layout.slots)
    for match in _TEXT_ENTITY.finditer(text):
        size, color, kind, angle, slot = match.groups()
        entity = (SIZES.index(size), COLORS.index(color), TYPES.index(kind), ANGLES.index(angle))
        slots[layout.slots.index(slot or "")] = entity
    return tuple(slots)


def parse_text_panel(text: str, config: str) -> Panel:
    """Inverse of ``render_panel(..., 'text')``; a text that does not re-render identically is an error."""
    layouts = CONFIGS[check_config(config)]
    prefix = "On an image, " + (OUT_IN_TEXT if len(layouts) > 1 else "")
    if not text.startswith(prefix):
        raise ValueError(f"Not a text {config} panel: {text!r}.")
    body = text[len(prefix) :]
    if len(layouts) == 1:
        parts = [body]
    else:
        outside, _, inside = body.partition("Inside: ")
        parts = [outside, inside]
    try:
        panel = tuple(_parse_text_component(part, layout) for part, layout in zip(parts, layouts))
        same = render_panel(panel, config, "text") == text
    except ValueError:
        same = False
    if not same:
        raise ValueError(f"Not a text {config} panel: {text!r}.")
    return panel


def split_prompt(prompt: str) -> list[str]:
    """The 16 panel strings (context 1-8, then candidates A-H) of a RAVEN row's prompt, i.e. the
    record's turns joined with newlines; panels may themselves contain newlines (symbolic out/in)."""
    head, tail = INSTRUCTION + "\n", "\n" + QUESTION
    if not (prompt.startswith(head) and prompt.endswith(tail)):
        raise ValueError("Not a RAVEN prompt: it must start with the instruction and end with the question.")
    body = "\n" + prompt[len(head) : -len(tail)]
    labels = [f"\n{i}. " for i in range(1, 9)] + [f"\n{letter}. " for letter in LETTERS]
    starts, position = [], 0
    for label in labels:
        position = body.find(label, position)
        if position < 0:
            raise ValueError(f"Not a RAVEN prompt: no panel {label.strip()!r} in order.")
        starts.append(position)
        position += len(label)
    ends = starts[1:] + [len(body)]
    return [body[start + len(label) : end] for start, end, label in zip(starts, ends, labels)]


def parse_prompt(prompt: str, config: str = "center_single", rendering: str = "symbolic") -> tuple[list, list]:
    """(context, candidates) panels of a RAVEN row's prompt, in either rendering."""
    parse = parse_panel if rendering == "symbolic" else parse_text_panel
    if rendering not in ("symbolic", "text"):
        raise ValueError(f"Unknown rendering {rendering!r}; expected one of text, symbolic.")
    panels = [parse(text, config) for text in split_prompt(prompt)]
    return panels[:8], panels[8:]
