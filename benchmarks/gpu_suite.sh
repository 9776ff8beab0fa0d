#!/usr/bin/env bash
# The accelerator benchmark suite (benchmarks/gpu_suite.py): `bash benchmarks/gpu_suite.sh [--smoke]`.
# Adapts to the machine's image: uses the installed jax when it is in the project's range (no dependency
# resolution), installs only the wheels carried in .whl/ (listed in benchmarks/gpu_wheels.txt), and puts the project
# on PYTHONPATH. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import jax, sys; v = tuple(int(x) for x in jax.__version__.split(".")[:2]); sys.exit(0 if (0, 10) <= v < (0, 13) else 1)'; then
  echo "error: $PY has no jax in the supported range 0.10 - 0.12 (install the project, or set PYTHON)" >&2
  exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seal_jax_site .whl/*.whl
  export PYTHONPATH="/tmp/seal_jax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_suite.py "$@"
