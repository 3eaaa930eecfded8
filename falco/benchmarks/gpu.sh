#!/usr/bin/env bash
# The speed benchmarks in one GPU run (about 6 minutes on an H100): the shipped loop (its step
# recorded as a CUDA graph) and the same loop eager, against the baseline at batch 1 and 5, with
# 50-step runs of one face; then channels-last, bf16, the 256 skip path and the accuracy of each
# option; then torch.compile (with and without CUDA graphs) last.  Each part has its own time limit, so that a slow compilation or a
# failure cannot cost the figures before it.
#
#   bash falco/benchmarks/gpu.sh                       # log: $OUT/bench.txt (OUT default /tmp/falco-bench)
#   FALCO_BENCH_QUICK=1 bash falco/benchmarks/gpu.sh   # a CPU smoke run of this script: 1 step per figure
#
# The GPU machine has torch, torchvision and timm but not open_clip and its text-side dependencies:
# their wheels are expected in .whl/ and go to /tmp/site.  dlib and gradio are not needed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/falco-bench}
mkdir -p "$OUT"
LOG="$OUT/bench.txt"
: > "$LOG"
QUICK=${FALCO_BENCH_QUICK:-0}
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# open_clip builds its text tokenizer (ftfy, regex) at import time; FaRL's image tower never uses
# it.  Without a regex wheel, the standard library's re stands in, for this benchmark only.
if ! "$PY" -c "import regex" 2> /dev/null; then
  mkdir -p /tmp/site-stub
  cat > /tmp/site-stub/regex.py << 'STUB'
# Benchmark-only stand-in for the regex package: open_clip's tokenizer compiles \p{..} patterns
# at import, and nothing here tokenizes text.
import re as _re
from re import *  # noqa: F401,F403


def compile(pattern, flags=0):
    try:
        return _re.compile(pattern, flags)
    except _re.error:
        return _re.compile(r"(?!)")
STUB
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site-stub"
  echo "note: no 'regex' module; a stand-in serves open_clip's unused tokenizer" | tee -a "$LOG"
fi

if [ "$QUICK" = 1 ]; then   # bf16 convolutions crawl on CPUs without bf16 units: left out here
  DEVICE=cpu; COMMON=(--device cpu --batch 1 --steps 1 --warmup 0)
  MAIN=(--skip256 --variants cl --accuracy-steps 1 --full-run-steps 2)
  FIRST=(--variants eager skip256 --full-run-steps 2)
  LIMIT_MAIN=1200; LIMIT_FIRST=600; LIMIT_COMPILE=5
else
  DEVICE=cuda; COMMON=(--device cuda --batch 1 5 --steps 10 --warmup 3)
  FIRST=(--variants eager bf16 skip256)
  MAIN=(--no-exact --variants eager+bf16 eager+skip256 cl nondet bf16+nondet bf16+skip256 --accuracy-steps 10)
  LIMIT_MAIN=150; LIMIT_FIRST=120; LIMIT_COMPILE=80
fi

{
  echo "== $(date -u +%FT%TZ)  $(git rev-parse --short HEAD 2> /dev/null)  device=$DEVICE"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2> /dev/null
  "$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'open_clip', open_clip.__version__)"
} 2>&1 | tee -a "$LOG"

bench() {   # bench <seconds> <args...>: one benchmark process, killed (not the script) past its limit
  local limit=$1; shift
  echo | tee -a "$LOG"
  echo "\$ python -m falco.benchmarks.optim $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$PY" -m falco.benchmarks.optim "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "(exit $rc$([ "$rc" = 124 ] && echo ": time limit ${limit}s"))" | tee -a "$LOG"
}

# 0. The recorded step replays the eager steps (the CUDA-only test), where pytest is installed.
if [ "$DEVICE" = cuda ] && "$PY" -c "import pytest" 2> /dev/null; then
  echo | tee -a "$LOG"
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_speed.py -k cuda_graph_replays 2>&1 | tail -3 | tee -a "$LOG"
fi
# 1. The shipped loop (step recorded as a CUDA graph) and the eager loop, against the baseline.
bench "$LIMIT_FIRST" "${COMMON[@]}" "${FIRST[@]}" --full-run
# 2. Baseline and the other variants at batch 1 and 5, complete 50-step runs, accuracy (~2.5 min).
bench "$LIMIT_MAIN" "${COMMON[@]}" "${MAIN[@]}" --full-run --accuracy
# 3. torch.compile, then with CUDA graphs (each compiles for batch 1, then again for batch 5).
bench "$LIMIT_COMPILE" "${COMMON[@]}" --no-baseline --no-exact --variants bf16+compile --full-run
bench "$LIMIT_COMPILE" "${COMMON[@]}" --no-baseline --no-exact --variants bf16+cudagraphs --full-run

echo | tee -a "$LOG"
echo "== summary (step times: median; ratios: baseline / ours at the same batch)" | tee -a "$LOG"
grep -E "^(loop |baseline |ours )|step totals|^  (baseline|ours) .*batch 1:|^  ours .* s$|^complete|^accuracy|^  (exact|variant|bf16|skip|cl|nondet|eager)|could not be recorded|passed|failed" "$LOG" \
  | grep -v "s/step$" | tee "$OUT/summary.txt"
