"""Reading the carried benchmark files (plain or gzip-compressed), with errors that name file and line.

The package ships its data gzip-compressed; a user may point ``data_dir`` at an uncompressed
copy (e.g. the shared data folder), so every reader accepts ``name`` or ``name.gz``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def read_json(path: Path) -> Any:
    """One JSON document; empty or malformed files raise ValueError with the position."""
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: file is empty.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno}).") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line; malformed lines raise ValueError."""
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: file is empty.")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: malformed JSON line ({error.msg}, column {error.colno}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
        yield number, record
