"""The paper's experiment from a script: the same code as ``iclm experiment``.

    python examples/run_experiment.py --preset smoke --out runs/smoke                # ≈2 min, CPU
    python examples/run_experiment.py --preset default --out runs/default            # ≈25 min, 2 CPU cores
    python examples/run_experiment.py --preset default --out runs/qwen \
        --base-model Qwen/Qwen2.5-0.5B --dtype bfloat16                              # a real LLM, on a GPU

Without ``--base-model`` it builds the embedded default base (a tiny Llama pretrained on the training
splits only: a CPU stand-in for a real LLM). An interrupted run resumes from ``--out``. See
``iclm.experiment.runner`` for what runs and what is written.
"""

import sys

from iclm.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
