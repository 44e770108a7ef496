"""Sizes of the experiment: ``smoke`` (the tests run it end to end, ≤ 2 min) and ``default`` (the README's table)."""

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    base_preset: str  # preset of the embedded default base, when no --base-model is given
    train_per_distribution: int  # training rows per task × rendering (4 training distributions)
    test_per_split: int  # evaluated rows per test split (12 splits)
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

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "smoke": ExperimentPreset(name="smoke", base_preset="smoke", train_per_distribution=16, test_per_split=6,
                              max_steps=3, batch_size=4, learning_rate=2e-3, max_length=320, seeds=2,
                              eval_batch_size=24, analysis_rows=6),
    "default": ExperimentPreset(name="default", base_preset="default", train_per_distribution=400,
                                test_per_split=60, max_steps=150, batch_size=8, learning_rate=1e-3, max_length=384,
                                seeds=3, analysis_rows=40),
}


def get_preset(name: str, **overrides) -> ExperimentPreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {', '.join(PRESETS)}.")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
