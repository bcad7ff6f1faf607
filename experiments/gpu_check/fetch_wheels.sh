#!/usr/bin/env bash
# What the GPU machine lacks, into git-ignored folders of the checkout that travel with `carry`:
#   .whl/      wheels of the pure-Python packages gendisc needs and the GPU image does not hold
#              (hydra-core, omegaconf, antlr4-python3-runtime; versions of this checkout's .venv)
#   .gpu_data/ the offline MNIST files (the ../shared beside a checkout does not travel)
# Run once here (network needed), from the repository root: bash experiments/gpu_check/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA=${GENDISC_DATA_DIR:-$(cd .. && pwd)/shared/data}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
rm -f .whl/*.whl
# pure-Python wheels (py3-none-any) for the GPU machine's Python 3.12
for pkg in hydra-core omegaconf; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "$pkg==$(version "$pkg")"
done
# antlr4-python3-runtime 4.9.3 (hydra's parser) is published as a source archive only: build it
"$PY" -m pip wheel --quiet --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
mkdir -p .gpu_data/MNIST/raw
install -m 644 "$DATA"/MNIST/raw/*.gz .gpu_data/MNIST/raw/
ls -la .whl .gpu_data/MNIST/raw
du -sh .whl .gpu_data
