#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows for every runtime dependency (the newest patch
# release of each lower bound) into a scratch venv, and run the test suite there. Run it after
# changing a lower bound:   bash benchmarks/min_versions.sh [VENV_DIR]    (about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/dirtysim-min-venv}
MINIMUM=(  # keep in step with [project] dependencies and the [pandas] extra in pyproject.toml
  'numpy==2.0.*'        # np.bitwise_count
  'numba==0.60.*'       # the first numba for numpy 2.0
  'simpy==4.1.*'
  'matplotlib==3.8.*'   # Figure(layout=...)
  'pydantic==2.6.*'
  'pyyaml==6.0.*'
  'msgspec==0.18.*'     # Struct tags, convert, encode(order="sorted")
  'tqdm==4.66.*'
  'click==8.2.*'        # CliRunner keeps stderr apart (the tests read it)
  'pandas==2.2.*'       # the first pandas built for numpy 2
)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${MINIMUM[@]}" pytest hypothesis nbclient nbformat ipykernel
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip freeze | grep -iE '^(numpy|numba|llvmlite|simpy|matplotlib|pydantic|pyyaml|msgspec|tqdm|click|pandas)=='
"$VENV/bin/python" -m pytest -q -p no:cacheprovider
