"""Quiet, readable terminals for the ``iclm`` commands.

* :func:`silence_import_noise`: optional backends that transformers imports whenever they are installed (torchao)
  log lines at import time that say nothing about the run (``Failed to load …torchao/_C_mxfp8…``: CUDA kernels on a
  machine without them; torch's ``_pytree`` deprecation of torchao's enum registration). Those lines only are
  dropped; ``iclm/__init__.py`` installs the filters before anything imports torch.
* :func:`progress`: one progress bar per level on a terminal (nested levels leave no line behind); when stderr is
  not a terminal (a log file, a pipe), no bar at all, and a top-level loop writes one plain line when it ends.
* :func:`quiet_run`: a context for a whole command whose stderr is not a terminal: no ``datasets`` / transformers progress
  bars, and the collator's reports of cut prompts once per setting instead of once per collator.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Iterable, Optional, TextIO

# (logger, text of the only records it drops)
IMPORT_NOISE = (
    ("torchao", "Failed to load"),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
)


class _DropRecords(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def silence_import_noise() -> None:
    """Drop the optional backends' import-time lines (:data:`IMPORT_NOISE`); every other record passes."""
    for name, text in IMPORT_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) and f.text == text for f in logger.filters):
            logger.addFilter(_DropRecords(text))


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (stderr by default) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, level: int = 0,
             stream: Optional[TextIO] = None) -> Iterable:
    """``iterable`` with progress: a tqdm bar on a terminal (``level`` 0 stays, nested ones vanish when done);
    elsewhere no bar, and a level-0 loop writes ``desc: N done in S s`` once, at its end."""
    if interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, position=level, leave=level == 0, dynamic_ncols=True,
                    file=stream)
    return _plain(iterable, desc, level, stream)


def _plain(iterable: Iterable, desc: str, level: int, stream: Optional[TextIO]):
    started, count = time.time(), 0
    for item in iterable:
        count += 1
        yield item
    if level == 0:
        print(f"{desc}: {count} done in {time.time() - started:.0f} s", file=sys.stderr if stream is None else stream,
              flush=True)


@contextlib.contextmanager
def quiet_run(stream: Optional[TextIO] = None):
    """While a command runs with stderr not a terminal: no ``datasets`` or transformers progress bars, and cut
    prompts reported once per collator setting. Everything is restored on exit; on a terminal nothing changes.
    Yields whether it is quiet."""
    if interactive(stream):
        yield False
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    from iclm.tasks.collator import AnswerOnlyCollator

    bars = (datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    every = AnswerOnlyCollator.report_every_collator
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    AnswerOnlyCollator.report_every_collator = False
    try:
        yield True
    finally:
        AnswerOnlyCollator.report_every_collator = every
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def quiet_process(stream: Optional[TextIO] = None) -> bool:
    """:func:`quiet_run` for the rest of this process (a spawned worker of a quiet command: its stderr is the
    command's). Returns whether it is quiet."""
    context = quiet_run(stream)
    quiet = context.__enter__()
    _KEPT.append(context)  # never exited: the settings last as long as the process
    return quiet


_KEPT: list = []
