"""Reading the carried benchmark files and users' prompt/answer files, with errors that name file and line.

The package ships its data gzip-compressed; a user may point ``data_dir`` at an uncompressed
copy (e.g. the shared data folder), so every reader accepts ``name`` or ``name.gz``.
Every error says ``file:line`` (1-based), what is wrong (not a file, not UTF-8, not gzip, not
JSON, not an object, a missing or mistyped field) and the expected form.
"""

from __future__ import annotations

import gzip
import json
import zlib
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

PathLike = Union[str, Path]

PACKAGE_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def data_dir(path: Optional[PathLike] = None) -> Path:
    """The data root: ``path`` if given, else the copy carried inside the package."""
    root = PACKAGE_DATA_DIR if path is None else Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Data directory {root} does not exist; pass data_dir=<folder with acre/ and raven/>.")
    return root


def resolve(root: Path, relative: str) -> Path:
    """``root/relative`` or its ``.gz`` twin, whichever exists."""
    for candidate in (root / relative, root / (relative + ".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Neither {root / relative} nor {root / relative}.gz exists.")


JSONL_FORM = "one JSON object {...} per line"
PROMPT_ANSWER_FORM = (
    'one JSON object per line with string "prompt" and "answer" fields and, optionally, an int "domain_id" '
    '(0..N-1) in every row or in none, e.g. {"prompt": "[5, 7] -> ", "answer": "12", "domain_id": 0}'
)
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file: give the path of the data file itself.")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")


def _not_gzip(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable gzip file ({error}); a .gz file must be gzip-compressed: "
                      "re-compress it, or drop the .gz suffix if it is plain text.")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _not_gzip(path, error) from None


def _not_utf8(path: Path, number: int, raw: bytes, error: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
        "save the file as UTF-8."
    )


def _read_text(path: Path) -> str:
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # utf-8-sig drops a 3-byte BOM before decoding: error positions count from after it.
        offset = error.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line_start = data.rfind(b"\n", 0, offset) + 1
        line = data[line_start : data.find(b"\n", offset) if b"\n" in data[offset:] else len(data)]
        error.start = offset - line_start
        raise _not_utf8(path, data.count(b"\n", 0, offset) + 1, line, error) from None


def read_json(path: Path) -> Any:
    """One JSON document; empty or malformed files raise ValueError with the position."""
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: file is empty; expected one JSON document.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno}).") from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for every line (1-based), read as UTF-8 one line at a time (plain or gzip)."""
    _check_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte-order mark (some editors write one)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise _not_utf8(path, number, raw, error) from None
                yield number, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _not_gzip(path, error) from None


def read_jsonl(path: Path, form: str = JSONL_FORM) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line; malformed lines raise ValueError naming ``file:line``
    and the expected ``form``; an empty file (or one of blank lines only) raises ValueError."""
    seen = False
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        seen = True
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number}: malformed JSON line ({error.msg}, column {error.colno}); expected {form}."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object {{...}}, got a JSON {_json_type(record)}; "
                             f"expected {form}.")
        yield number, record
    if not seen:
        raise ValueError(f"{path}: file is empty (no JSON lines); expected {form}.")


def check_prompt_answer_record(
    where: str, record: dict, fields: Sequence[str] = ("prompt", "answer"), form: str = PROMPT_ANSWER_FORM
) -> None:
    """ValueError, prefixed ``where`` (e.g. ``file:line``), unless ``record`` has string ``fields`` and, if it
    has a ``domain_id`` that is not null, a non-negative int one."""
    for name in fields:
        if name not in record:
            raise ValueError(f"{where}: missing the {name!r} field (the row has {sorted(record) or 'no fields'}); "
                             f"expected {form}.")
        if not isinstance(record[name], str):
            kind = _json_type(record[name])
            hint = f' (quote it: "{record[name]}")' if kind in ("number", "boolean") else ""
            raise ValueError(f"{where}: {name!r} is a JSON {kind} ({record[name]!r:.60}), expected a string{hint}; "
                             f"expected {form}.")
    domain = record.get("domain_id")
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int) or domain < 0):
        raise ValueError(
            f"{where}: domain_id is {domain!r} (a JSON {_json_type(domain)}); domain_id must be an int index 0..N-1 "
            "of the row's domain (N = --num_domains, e.g. 0 for acre and 1 for raven), or absent from every row: "
            "map domain names to indices first."
        )


def read_prompt_answer_jsonl(
    path: PathLike, form: str = PROMPT_ANSWER_FORM, num_domains: Optional[int] = None
) -> list[dict]:
    """The rows of a prompt/answer JSON-lines file (plain or ``.gz``), every one checked before any is used.

    Each line is a JSON object with string ``prompt`` and ``answer`` and, optionally, an int ``domain_id``
    (0..N-1) that every row has or none has; other fields are kept. A file holding one JSON array of such
    objects is read too (its items are numbered instead of lines). With ``num_domains``, a ``domain_id``
    must also be below it. Raises ValueError naming ``file:line`` (1-based), what is wrong and the expected
    form; an empty file says so.
    """
    path = Path(path)
    rows, lines = [], []
    if _first_character(path) == "[":
        document = read_json(path)
        if not isinstance(document, list) or not document:
            raise ValueError(f"{path}: a JSON array file must be a non-empty list of objects; expected {form}.")
        for number, record in enumerate(document, start=1):
            if not isinstance(record, dict):
                raise ValueError(f"{path}: item {number} of the array is a JSON {_json_type(record)}, not an object; "
                                 f"expected {form}.")
            rows.append(record)
        where = lambda number: f"{path}: item {number} of the array"  # noqa: E731
        lines = list(range(1, len(rows) + 1))
    else:
        for number, record in read_jsonl(path, form):
            rows.append(record)
            lines.append(number)
        where = lambda number: f"{path}:{number}"  # noqa: E731
    first_with = first_without = None
    types: dict[str, tuple[str, int]] = {}
    for number, record in zip(lines, rows):
        check_prompt_answer_record(where(number), record, form=form)
        if num_domains is not None and record.get("domain_id") is not None and record["domain_id"] >= num_domains:
            raise ValueError(f"{where(number)}: domain_id is {record['domain_id']}, but there are {num_domains} "
                             f"domains (indices 0..{num_domains - 1}); renumber the domains or raise --num_domains.")
        if record.get("domain_id") is None:
            first_without = first_without or number
            if first_with:
                raise ValueError(f"{where(number)}: this row has no domain_id, but {where(first_with)} has one; "
                                 "give every row a domain_id or none.")
        else:
            first_with = first_with or number
            if first_without:
                raise ValueError(f"{where(number)}: this row has a domain_id, but {where(first_without)} has none; "
                                 "give every row a domain_id or none.")
        for name, value in record.items():  # every column one type, or the data set cannot be built
            if value is None:
                continue
            kind = _json_type(value)
            first = types.setdefault(name, (kind, number))
            if first[0] != kind:
                raise ValueError(f"{where(number)}: field {name!r} is a JSON {kind} here but a JSON {first[0]} on "
                                 f"{where(first[1])}; give a field the same type in every row.")
    return rows


def _first_character(path: Path) -> str:
    with closing(iter_lines(path)) as lines:
        for _, line in lines:
            if line.strip():
                return line.strip()[0]
    return ""
