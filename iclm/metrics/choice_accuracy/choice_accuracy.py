"""Multiple-choice accuracy from per-candidate scores (e.g. answer log-likelihoods).

The score of each candidate comes from ``iclm.metrics.score_choices`` (summed log-probability of
the candidate's tokens after the prompt); the prediction is the best-scored candidate. Load it
offline with ``evaluate.load(path_to_this_folder)`` or ``iclm.metrics.load_metric("choice_accuracy")``.
"""

import math

import datasets
import evaluate

from iclm.metrics import grouped

_DESCRIPTION = """
Accuracy of picking the highest-scored candidate, with chance (1/number of candidates) and
majority-class baselines, overall, per split and per rendering.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): one score per candidate (higher is better).
    references (list of int): index of the right candidate.
    splits (list of str, optional): each row's split, for ``per_split`` results.
    renderings (list of str, optional): each row's rendering, for ``per_rendering`` results.
Returns:
    accuracy, chance, majority, count, and per_split / per_rendering dicts of the same.
Examples:
    >>> metric = evaluate.load("iclm/metrics/choice_accuracy")
    >>> metric.compute(predictions=[[-1.0, -3.0], [-2.0, -0.5]], references=[0, 0])["accuracy"]
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
class ChoiceAccuracy(grouped.GroupedAccuracy):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                    "splits": datasets.Value("string"),
                    "renderings": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, splits, renderings):
        correct = []
        for index, (scores, reference) in enumerate(zip(predictions, references)):
            if not scores:
                raise ValueError(f"Example {index} has no candidate scores.")
            if not 0 <= reference < len(scores):
                raise ValueError(
                    f"Example {index}: reference index {reference} is outside its {len(scores)} candidates."
                )
            if not all(math.isfinite(score) for score in scores):
                raise ValueError(
                    f"Example {index} has non-finite candidate scores {scores}: the scorer overflowed (fp16?) or "
                    "failed; a NaN would silently pick candidate 0."
                )
            best = max(range(len(scores)), key=lambda i: scores[i])  # ties: the first best
            correct.append(best == reference)
        chances = [1.0 / len(scores) for scores in predictions]
        return grouped.grouped_summary(correct, list(references), chances, {"splits": splits, "renderings": renderings})
