#!/usr/bin/env bash
# make gpu-check: one command for the GPU machine (issue 25), in three parts:
#   1. pytest -m gpu: CUDA tests of the batched nets, Adam, EMA, members and single runs;
#   2. the bench on CUDA: a single run under Lightning and the naive loop (bench_ssl_gan.py),
#      and members N = 1, 4, 17 with rng member and shared, eager and with CUDA graphs;
#   3. the paper's MNIST table (17 runs, 300 epochs x 590 steps) as ONE group of members
#      (table.py; CUDA graphs when their GPU test passed), its runs.csv and the paper table.
# GPU_CHECK_BUDGET=tiny: the same parts on a tiny budget (1 epoch of 2 steps; a CPU runs it in
# a few minutes); full (default): the real schedule, the table stopping at the time left of
# GPU_CHECK_SECONDS (default 450) if it must (table_summary.json then says so).
# GPU_CHECK_PARTS (default "pytest bench table") runs some parts only, e.g. "table" alone to
# give the table the whole budget; GPU_CHECK_GRAPHS=0|1|force (1: CUDA graphs for the table when
# their test passed in part 1).
# Results: $OUT (default outputs/gpu_check): gpu_check.log, pytest.txt, bench.txt,
# table_summary.json, runs.csv, report.md, table_runs.tar.gz (each run's metrics.json, .hydra/).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-full}
TOTAL=${GPU_CHECK_SECONDS:-450}
OUT=${OUT:-outputs/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee "$OUT/gpu_check.log") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
  [ -d .whl ] || { echo "no hydra-core here and no .whl/: run experiments/gpu_check/fetch_wheels.sh and carry .whl"; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/experiments${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${GENDISC_DATA_DIR:-}" ]; then
  if [ -d .gpu_data/MNIST ]; then export GENDISC_DATA_DIR=$PWD/.gpu_data; else export GENDISC_DATA_DIR=$(cd .. && pwd)/shared/data; fi
fi
export PYTHONUNBUFFERED=1
DEVICE=$("$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
echo "gpu-check: budget=$BUDGET device=$DEVICE python=$PYTHON data=$GENDISC_DATA_DIR $(git rev-parse --short HEAD 2>/dev/null)"
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
[ "$DEVICE" = cpu ] && THREADS="--threads ${GPU_CHECK_THREADS:-1}" || THREADS=""
STATUS=0

PARTS=${GPU_CHECK_PARTS:-pytest bench table}  # e.g. "pytest table": no bench
has() { [[ " $PARTS " == *" $1 "* ]]; }

echo "== 1. pytest -m gpu ($(elapsed) s)"
if has pytest; then
  "$PYTHON" -m pytest tests/test_gpu.py -m gpu -q -rA -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/pytest.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
fi
# the table uses CUDA graphs only when their test passed here (GPU_CHECK_GRAPHS=0: never)
GRAPHS=""
if [ "${GPU_CHECK_GRAPHS:-1}" = force ]; then
  GRAPHS="--graphs"
elif [ "${GPU_CHECK_GRAPHS:-1}" = 1 ] && has pytest && grep -q "PASSED tests/test_gpu.py::test_members_cuda_graphs_equal_eager\[${GPU_CHECK_RNG:-shared}\]" "$OUT/pytest.txt"; then
  GRAPHS="--graphs"
fi

echo "== 2. bench ($(elapsed) s)"
if [ "$BUDGET" = tiny ]; then
  BENCH="--steps 3 --warmup 1 --rounds 1 --skip-bf16 --skip-rates --skip-breakdown --members 1,2 --members-steps 2 --members-rng member,shared"
else
  BENCH="--steps 200 --warmup 10 --rounds 2 --skip-bf16 --members 1,4,17 --members-steps 300 --members-rng shared,member,shared+graphs"
fi
if has bench; then
  timeout $(( TOTAL / 3 )) "$PYTHON" experiments/bench_ssl_gan.py --device "$DEVICE" $THREADS $BENCH 2>&1 | tee "$OUT/bench.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
fi

echo "== 3. the MNIST table as one group of 17 members ($(elapsed) s)"
if [ "$BUDGET" = tiny ]; then
  TABLE="--epochs 1 --steps-per-epoch 2"
else
  TABLE="--epochs 300 --time-limit-s $(( TOTAL - $(elapsed) - 120 ))"  # 120 s: build + reports
fi
if has table; then
  "$PYTHON" experiments/gpu_check/table.py --out "$WORK/table" --device "$DEVICE" --rng "${GPU_CHECK_RNG:-shared}" $GRAPHS $TABLE \
    "~callbacks.generative_metrics" "~callbacks.samples" logger=[] ${THREADS:+threads=1} 2>&1 \
    | grep -v -E '^\s*[│┃┏┡└━]|^Testing|^Validation' | tee "$WORK/table.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
  cp "$WORK/table/table_summary.json" "$OUT/" 2>/dev/null
  "$PYTHON" -m gendisc.report.cli --table experiments/salimans_2016/table.yaml "$WORK/table" --out "$WORK/paper" --no-plots \
    && cp "$WORK/paper/report.md" "$WORK/paper/runs.csv" "$OUT/" || STATUS=1
  (cd "$WORK/table" && tar czf - --exclude=checkpoints --exclude=csv salimans_mnist_table) > "$OUT/table_runs.tar.gz"
fi
echo "== done in $(elapsed) s, status $STATUS; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee write the log
exit $STATUS
