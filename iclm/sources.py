"""Checking what a user points the command line at, before any expensive work.

* :func:`resolve_model_source`: a model given by local folder or Hub id, with an error that says a folder
  does not exist (for what looks like a path) or that a Hub id cannot be resolved offline, instead of
  huggingface_hub's ``Repo id must be in the form 'repo_name' ...``;
* :func:`check_causal_lm`: refuse an encoder (BERT-style masked LM), an encoder-decoder or a model with no
  causal-LM class, from its ``config.json`` alone (nothing is loaded);
* :func:`check_dtype`: ``--dtype`` among :data:`DTYPES`;
* :func:`check_output_folder`: an output folder that can be written without clobbering anything.

The checks import nothing heavy: they cost milliseconds, so commands run them before building anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

PathLike = Union[str, os.PathLike]

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Files that make a folder a loadable model: a transformers checkpoint, or a PEFT adapter over a base.
MODEL_FILES = ("config.json", "adapter_config.json")
EXAMPLE_SOURCES = ("a local folder written by save_pretrained (it holds config.json) or a Hub id such as "
                   "'Qwen/Qwen2.5-0.5B'")


def check_dtype(value: str, option: str = "--dtype") -> str:
    """``value`` as one of :data:`DTYPES` (``torch.bfloat16`` is read as ``bfloat16``); ValueError otherwise."""
    name = str(value).strip().lower()
    name = name[len("torch."):] if name.startswith("torch.") else name
    if name not in DTYPES:
        raise ValueError(
            f"{option} {value!r} is not a supported dtype: use one of {', '.join(DTYPES)} ".lstrip()
            + f"(e.g. {option or '--dtype'} bfloat16; auto keeps the checkpoint's own dtype)."
        )
    return name


def looks_like_path(name: str) -> bool:
    """True for what can only be a file-system path, never a Hub id (``owner/name`` or ``name``)."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or os.path.isabs(name)
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def resolve_model_source(
    name_or_path: PathLike,
    *,
    option: str = "model",
    cache_dir: Optional[PathLike] = None,
    revision: Optional[str] = None,
    subfolder: str = "",
) -> str:
    """The model source to hand to ``from_pretrained``: an existing local folder (``~`` expanded), or a Hub id.

    Raises, before anything is loaded:

    * FileNotFoundError: the path does not exist (for what looks like a path: ``./x``, ``/x``, ``~/x``,
      ``a/b/c``), or the folder holds no ``config.json`` / ``adapter_config.json``, or, offline
      (``HF_HUB_OFFLINE=1``), the Hub id is neither a local folder nor in the Hugging Face cache;
    * ValueError: the path is a file, or the name is neither a folder nor a valid Hub id.

    ``option`` names the argument in the messages (e.g. ``"--base-model"``); ``cache_dir``, ``revision``
    and ``subfolder`` are ``from_pretrained``'s, for where the files are looked for.
    """
    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{option} is empty: give {EXAMPLE_SOURCES}.")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not any(os.path.isfile(os.path.join(expanded, subfolder, file)) for file in MODEL_FILES):
            raise FileNotFoundError(
                f"{option} {name!r} is a folder without config.json, so not a saved model; point it at the folder "
                "that save_pretrained wrote (the one holding config.json and the weights)."
            )
        return expanded
    if os.path.exists(expanded):
        raise ValueError(
            f"{option} {name!r} is a file; a model is {EXAMPLE_SOURCES}: pass the folder that holds it."
        )
    if looks_like_path(name):
        raise FileNotFoundError(
            f"{option}: the folder {name!r} does not exist (looked for {os.path.abspath(expanded)}); check the path, "
            f"or give {EXAMPLE_SOURCES}."
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise ValueError(
            f"{option} {name!r} is neither an existing folder nor a valid Hub id ({error}); give {EXAMPLE_SOURCES}."
        ) from None
    if _offline():
        from huggingface_hub import constants, try_to_load_from_cache

        cached = [try_to_load_from_cache(name, f"{subfolder}/{file}" if subfolder else file, cache_dir=cache_dir,
                                         revision=revision) for file in MODEL_FILES]
        if not any(isinstance(path, str) for path in cached):
            raise FileNotFoundError(
                f"{option} {name!r} is not a local folder (none at {os.path.abspath(expanded)}), and as a Hub id it "
                f"could not be resolved offline: HF_HUB_OFFLINE is set and it is not in the Hugging Face cache "
                f"({cache_dir or constants.HF_HUB_CACHE}). Download it once with network access "
                f"(`hf download {name}`), or pass a local folder written by save_pretrained."
            )
    return name


def read_model_config(source: str, *, option: str = "model") -> Optional[dict]:
    """The raw ``config.json`` of a source from :func:`resolve_model_source` (``None`` for a PEFT adapter
    folder, which has none). Reads the file only: no model class, no remote code."""
    local = Path(source) / "config.json"
    if Path(source).is_dir():
        if not local.is_file():
            return None
        try:
            return json.loads(local.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            where = f":{error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
            raise ValueError(
                f"{local}{where}: not a valid JSON config ({error}); re-save the model with save_pretrained."
            ) from None
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(source)
    except OSError as error:
        raise FileNotFoundError(f"{option} {source!r}: could not read its config.json ({error}).") from None
    return config


def check_causal_lm(source: str, *, option: str = "--base-model") -> Optional[dict]:
    """Refuse a model that cannot be an ICLM base, from its config alone; returns the config dict.

    A base must be a causal (decoder) LM: its ``model_type`` has a class in transformers' causal-LM
    mapping (or its ``auto_map`` names ``AutoModelForCausalLM``), it is not an encoder-decoder, and an
    encoder family whose causal class needs ``is_decoder=True`` (BERT, RoBERTa, ELECTRA, …: masked LMs
    that attend to the whole text) must have it set.
    """
    config = read_model_config(source, option=option)
    if config is None:  # a PEFT adapter folder: its base is checked where it is loaded
        return None
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    fix = "use a decoder-only causal LM such as Llama, Qwen, Mistral or GPT-2."
    if not model_type:
        raise ValueError(f"{option} {source!r}: its config.json has no model_type, so its architecture is unknown; "
                         "re-save it with save_pretrained, or " + fix)
    if config.get("is_encoder_decoder"):
        raise ValueError(
            f"{option} {source!r} is a {model_type!r} encoder-decoder (sequence-to-sequence) model, not a causal LM; "
            + fix
        )
    custom_causal = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not custom_causal:
        raise ValueError(f"{option} {source!r} is a {model_type!r} model without a causal-LM head; " + fix)
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not custom_causal
    if encoder and not config.get("is_decoder") and not config.get("causal"):
        architectures = ", ".join(config.get("architectures") or [])
        raise ValueError(
            f"{option} {source!r} is a {model_type!r} encoder ({architectures + '; ' if architectures else ''}"
            "is_decoder is not set): a masked LM "
            "whose tokens attend to the whole text, so it cannot predict the next token. " + fix[0].upper() + fix[1:]
        )
    return config


def check_output_folder(
    path: PathLike,
    option: str,
    *,
    reusable: Optional[Callable[[Path], bool]] = None,
    reuse: str = "",
) -> tuple[Path, bool]:
    """Check that ``path`` can be written as an output folder; returns ``(path, reused)``.

    A missing or empty folder is fine (``reused`` False). A non-empty folder passes only when
    ``reusable(folder)`` says it is this command's own earlier output (``reused`` True; ``reuse`` says
    what happens to it, e.g. ``"it is replaced"``, for the refusal message). Raises
    FileExistsError (an existing file, or a non-empty foreign folder), NotADirectoryError (a file
    where a parent folder should be) or PermissionError (the folder cannot be created or written).
    """
    if not str(path).strip():
        raise ValueError(f"{option} is empty: give a folder to write to.")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{option} {path} is an existing file, not a folder; choose a new folder name "
                              "(nothing was written).")
    if folder.is_dir():
        entries = sorted(entry.name for entry in folder.iterdir())
        if entries and not (reusable is not None and reusable(folder)):
            shown = ", ".join(entries[:4]) + (", …" if len(entries) > 4 else "")
            accepted = f" (only an earlier output of this command is accepted: {reuse})" if reuse else ""
            raise FileExistsError(
                f"{option} {path} is a folder that already holds other files ({shown}){accepted}; choose a new or "
                "empty folder, or empty this one yourself (nothing was written)."
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{option} {path}: the folder is not writable; choose another folder.")
        return folder, bool(entries)
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{option} {path}: {parent} is a file, so no folder can be created under it; "
                                 "choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: cannot create it, {parent} is not writable; choose another path.")
    return folder, False


# Config keys that hold a model's context window (positions it can embed), by family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length",
                "max_seq_len")


def context_window(config: Union[dict, object, None]) -> Optional[tuple[int, str]]:
    """``(tokens, key)``: the context window a model config declares (a dict or a ``PretrainedConfig``; an ICLM's
    nested ``text_config`` is read), or None when it declares none."""
    if config is None:
        return None
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    nested = get("text_config")
    if get("model_type") == "iclm" and nested is not None:
        return context_window(nested)
    for key in CONTEXT_KEYS:
        value = get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def check_context_window(source_or_config, needed: int, what: str, *, option: str = "--base-model") -> None:
    """Refuse a base whose context window is shorter than ``needed`` tokens (``what`` says which lengths need them),
    before anything is trained: such a base would fail mid-run with ``IndexError: index out of range``. A base
    that declares no window (rotary models without a limit) passes."""
    config = (read_model_config(str(source_or_config), option=option)
              if isinstance(source_or_config, (str, os.PathLike)) else source_or_config)
    found = context_window(config)
    if found is None or found[0] >= needed:
        return
    window, key = found
    raise ValueError(
        f"{option}: this base's context window is {window} tokens ({key} in its config), but {what} need(s) {needed}: "
        "it would fail mid-run (index out of range). Use a base with a longer context, or lower those lengths."
    )


def check_iclm_folder(folder: PathLike, *, option: str = "--model") -> dict:
    """The config of a saved ICLM folder; a clear error for a folder that is missing or holds another kind of model."""
    config = read_model_config(resolve_model_source(folder, option=option), option=option)
    model_type = (config or {}).get("model_type")
    if model_type != "iclm":
        kind = f"a {model_type!r} model" if model_type else "no model config (a PEFT adapter folder?)"
        raise ValueError(
            f"{option} {folder}: holds {kind}, not an ICLM. Give a folder saved from an ICLM (IclmForCausalLM."
            "save_pretrained, iclm experiment's models/seed_<s>/iclm, iclm continual's models/seed_<s>/iclm_added); "
            "to make one from this base, wrap it with IclmForCausalLM.from_base(base, num_domains=N) and train it."
        )
    return config


def check_preset_context(base, preset, *, option: str = "--base-model") -> None:
    """:func:`check_context_window` for a run preset (``iclm experiment``'s or ``iclm continual``'s): the base must
    hold the training rows (``preset.max_length``) and the evaluation prompts plus the generated answer
    (``preset.eval_max_length + preset.max_new_tokens``). ``base``: a source (folder or Hub id) or its config."""
    needed = max(preset.max_length, preset.eval_max_length + preset.max_new_tokens)
    check_context_window(base, needed, f"the {preset.name} preset's training rows (max_length {preset.max_length}) "
                         f"and evaluation rows (eval_max_length {preset.eval_max_length} + {preset.max_new_tokens} "
                         "generated tokens)", option=option)
