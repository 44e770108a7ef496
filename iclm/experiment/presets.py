"""Sizes of the experiment: ``smoke`` (the tests run it end to end, ≤ 2 min; its numbers mean nothing),
``default`` (the README's table: ≈1 h on 2 CPU cores, 50 CPU-minutes on one thread) and ``real``
(SmolLM2-135M-Instruct, the paper's fine-tuning settings scaled down; see :mod:`iclm.experiment.smollm2`)."""

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    base_preset: str  # preset of the embedded default base, when no --base-model is given ("smollm2": the real LLM)
    train_per_distribution: int  # training rows per task × rendering (4 training distributions)
    test_per_split: int  # evaluated rows per test split
    max_steps: int  # optimizer steps, the same for every trained system
    batch_size: int
    learning_rate: float
    max_length: int  # training rows (prompt cut from the left beyond this)
    seeds: int
    num_domains: int = 4  # one domain module per training distribution, as in the paper's setting
    eval_batch_size: int = 32
    max_new_tokens: int = 3  # the answers are one word / letter (+ eos)
    eval_max_length: int = 1536  # test prompts (o.o.d. RAVEN text runs to ~1k tokens): never cut a puzzle
    analysis_rows: int = 48  # rows per test split for router and independence analysis
    # Training data. ACRE: ``acre_train_generated`` generated problems (4 query rows each, both renderings,
    # none sharing its context with a real problem) replace the one real file IID/val.json (0: use the file,
    # as the paper's 2,000 problems); RAVEN: the real center_single val file, plus ``raven_train_generated``
    # generated center_single problems with ``raven_train_candidates`` answer sets.
    acre_train_generated: int = 0
    raven_train_generated: int = 0
    raven_train_candidates: str = "original"
    # Test splits: the real files and the generated o.o.d. configurations, plus the generated center_single
    # problems with I-RAVEN's balanced answer sets (``center_single_balanced``), which no context-blind rule solves.
    balanced_tests: bool = True
    # Optimisation: the LR schedule and its warm-up share, and whether batches group rows of similar length
    # (ACRE and RAVEN rows differ 3-5× in length: grouping saves the padding).
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    group_by_length: bool = False
    # Learning curves: every ``curve_every`` steps (0: none), accuracy on the first ``curve_rows`` rows of each
    # in-distribution test split (reported only: nothing is selected on them).
    curve_every: int = 0
    curve_rows: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # A shared trunk (IclmConfig.adapter_layers, beyond the paper): the ICLM systems' modules adapt only the top K
    # decoder layers and the layers below run once per row (None: every layer, as the paper). The single LoRA keeps
    # every layer, so a run with and one without K measures what the trunk costs in accuracy.
    adapter_layers: int | None = None
    # CPU threads for torch (None: torch's default, one per core). The embedded base is too small to gain much
    # from a second thread, and a second thread stalls (3-10x slower steps, measured) whenever another process
    # keeps a core busy, so the CPU presets use one.
    torch_threads: int | None = None
    # Worker processes running (seed, system) chains side by side: a CPU core each with one torch thread (the base
    # is too small to gain from a second thread; a second process gains ~2x).
    workers: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "smoke": ExperimentPreset(name="smoke", base_preset="smoke", train_per_distribution=16, test_per_split=6,
                              max_steps=3, batch_size=4, learning_rate=2e-3, max_length=320, seeds=2,
                              eval_batch_size=24, analysis_rows=6, acre_train_generated=8, curve_every=2,
                              curve_rows=4, torch_threads=1),
    # The shipped stand-in (iclm/data/stand_in, pretrained on the skills corpus by `iclm pretrain`). Every trained
    # system sees the same fresh generated problems once (ACRE: generated, 4 queries each; RAVEN: generated
    # center_single with I-RAVEN balanced answer sets beside the real val file), in random batches that mix the
    # four training distributions (the VQ and MI terms are batch statistics).
    "default": ExperimentPreset(name="default", base_preset="stand_in", train_per_distribution=500,
                                test_per_split=80, max_steps=250, batch_size=8, learning_rate=2e-3, max_length=768,
                                seeds=3, analysis_rows=32, acre_train_generated=500, raven_train_generated=500,
                                raven_train_candidates="balanced", lr_scheduler_type="linear", warmup_ratio=0.05,
                                group_by_length=False, curve_every=125, curve_rows=32, torch_threads=1, workers=2),
    # SmolLM2-135M-Instruct (134.5M parameters, iclm.experiment.smollm2): the paper's LoRA (r = 8, alpha 16,
    # dropout 0.05 on q/k/v/o), lr 5e-4, answer-only labels. Sized for 2 CPU cores: an ICLM step of batch 8 takes
    # ~38 s there, a LoRA step ~27 s, and the whole preset ~1 h (docs/results/real) -- a run of the real-LLM path,
    # not a result. On a GPU: --seeds 3 --max-steps 500 --test-per-split 200 (see the README).
    "real": ExperimentPreset(name="real", base_preset="smollm2", train_per_distribution=400, test_per_split=8,
                             max_steps=10, batch_size=8, learning_rate=5e-4, max_length=448, seeds=1,
                             eval_batch_size=8, analysis_rows=4, acre_train_generated=100, warmup_ratio=0.1,
                             group_by_length=True, curve_every=5, curve_rows=4),
}


def get_preset(name: str, **overrides) -> ExperimentPreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {', '.join(PRESETS)}.")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
