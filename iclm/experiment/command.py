"""``iclm experiment``: the paper's comparison in one command (see :mod:`iclm.experiment.runner`)."""

import argparse

from .presets import PRESETS, get_preset
from .systems import SYSTEMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="sizes: 'smoke' (≈2 min, for tests) or 'default' (the README's table, ≈25 min on 2 CPU cores)")
    parser.add_argument("--out", required=True, help="run folder (an interrupted run resumes from it)")
    parser.add_argument("--base-model", default=None,
                        help="causal LM id or path (Llama, Qwen, Mistral, GPT-2, …); default: build the embedded CPU stand-in")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), metavar="SYSTEM",
                        help=f"systems to run, among: {', '.join(SYSTEMS)}")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per system (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the preset's)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row (default: the preset's)")
    parser.add_argument("--dtype", default="auto", help="base weights dtype: auto, bfloat16, float16, float32")
    parser.add_argument("--load-in-4bit", action="store_true", help="4-bit base through transformers' quantization config")
    parser.add_argument("--cache-dir", default=None, help="where the embedded default base is cached (default ~/.cache/iclm)")


def run(args: argparse.Namespace) -> int:
    from .runner import ExperimentConfig, run_experiment

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}.")
    preset = get_preset(args.preset, seeds=args.seeds, max_steps=args.max_steps, batch_size=args.batch_size,
                        max_length=args.max_length)
    config = ExperimentConfig(out=args.out, preset=preset, systems=args.systems, base_model=args.base_model,
                              cache_dir=args.cache_dir, load_in_4bit=args.load_in_4bit, dtype=args.dtype)
    run_experiment(config)
    return 0
