"""Independent Causal Language Models (Gendron et al. 2024, arXiv 2402.02636) for Hugging Face.

The model, its configuration and trainer are top-level modules (``modeling_iclm``,
``configuration_iclm``, ``trainer_iclm``) so that they also work as Hub remote code. This
package holds what surrounds them:

* :mod:`iclm.tasks` -- the paper's reasoning benchmarks (ACRE, RAVEN) as ``datasets`` objects,
  a RAVEN problem generator and an answer-only data collator;
* :mod:`iclm.metrics` -- exact-match and choice accuracy as local ``evaluate`` modules;
* :mod:`iclm.cli` -- the ``iclm`` console script.

Nothing heavy is imported here, so ``import iclm`` stays cheap.
"""

__version__ = "0.1.0"

from iclm.terminal import silence_import_noise as _silence_import_noise

_silence_import_noise()  # before anything imports torch: see iclm.terminal
