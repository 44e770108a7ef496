"""The cost benchmark as a script: ``python benchmarks/step_cost.py [options]`` is ``iclm bench --paper [options]``
(the paper code's N+2-copies design measured too). See ``iclm/bench.py`` for what is measured and how."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclm.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--paper", *sys.argv[1:]]))
