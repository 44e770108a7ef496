"""Exact-match accuracy of generated answers, normalised as in the ICLM paper.

Load it offline from its folder: ``evaluate.load(path_to_this_folder)`` or
``iclm.metrics.load_metric("exact_match_accuracy")``.
"""

import datasets
import evaluate

from iclm.metrics import grouped, normalization

_DESCRIPTION = """
Exact match between the first word of a generated continuation and the reference answer
(ACRE: first word; RAVEN: first letter A-H), lower-cased and stripped of punctuation.
Returns overall, per-split and per-rendering accuracy with chance and majority baselines.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated continuations (only their first word counts).
    references (list of str): reference answers (a row's ``answer``).
    choices (list of list of str, optional): each row's ``choices``, for the chance baseline.
    splits (list of str, optional): each row's split, for ``per_split`` results.
    renderings (list of str, optional): each row's rendering, for ``per_rendering`` results.
    tasks (list of str, optional): "acre" (compare first words) or "raven" (first letters);
        by default a single-letter A-H reference means RAVEN.
Returns:
    accuracy, chance, majority, count, and per_split / per_rendering dicts of the same.
Examples:
    >>> metric = evaluate.load("iclm/metrics/exact_match_accuracy")
    >>> metric.compute(predictions=["on. The light", "B. On an image"], references=["on", "C"])["accuracy"]
    0.5
"""

_CITATION = """
@inproceedings{gendron2024iclm,
  title={Independent Causal Language Models},
  author={Gendron, Ga{\\"e}l and others},
  year={2024},
  eprint={2402.02636}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatchAccuracy(grouped.GroupedAccuracy):
    optional_inputs = {"choices": [], "splits": "", "renderings": "", "tasks": ""}

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "choices": datasets.Sequence(datasets.Value("string")),
                    "splits": datasets.Value("string"),
                    "renderings": datasets.Value("string"),
                    "tasks": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, choices, splits, renderings, tasks):
        correct, labels = [], []
        for prediction, reference, task in zip(predictions, references, tasks):
            if task not in ("", "acre", "raven"):
                raise ValueError(f"Unknown task {task!r} for exact match; expected 'acre' or 'raven'.")
            form = {"acre": "word", "raven": "letter"}.get(task) or normalization.answer_format(reference)
            label = normalization.normalize_answer(reference, form)
            correct.append(normalization.normalize_answer(prediction, form) == label)
            labels.append(label)
        chances = [1.0 / len(options) if options else None for options in choices]
        return grouped.grouped_summary(correct, labels, chances, {"splits": splits, "renderings": renderings})
