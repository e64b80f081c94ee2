#!/usr/bin/env bash
# The GPU check: everything a CUDA run must show, in one call of at most 8 minutes on one H100 or H200.
#
#   bash scripts/gpu_check.sh              # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run    # every step, tiny, on the CPU (about 30 s on 2 cores; the tests run it)
#
# Environment: OUT, the folder for the raw outputs (default docs/results/gpu/ in the repository; a new
# temporary folder for a dry run; a relative OUT is taken from the current folder); PYTHON (default python3); CHARGEN_CORPORA, the folder holding tinyshakespeare.txt (without it
# the time-to-quality step trains on the embedded default corpus, and says so).
#
# Steps, each with its own time limit so that one that hangs loses only itself (steps.tsv: name, exit
# status, seconds):
#   env.txt                 GPU, torch, CUDA, cuDNN; what each layer really runs in under each --precision
#   tests_gpu.txt           the tests marked gpu
#   train_throughput.txt    chars/s in fp32, bf16 and fp16 against a bare nn.LSTM loop at the same shapes
#   decode.txt              one stream, batches, 64 streams through the batcher, CUDA graphs (scripts/bench_sample.py)
#   cells.txt               each cell's training throughput against the LSTM's at equal parameters, T = 64 to 1024:
#                           the min cells' parallel scan on the GPU (scripts/bench_cells.py)
#   time_to_quality.txt     tiny shakespeare, --preset gpu, 4 minutes: best validation loss (with
#                           time_to_quality_metrics.jsonl), while utilisation.csv samples nvidia-smi each second
#   tests_cpu.txt           the rest of the suite, on that machine's CPUs, beside the time-to-quality run
#                           (on cores of its own where taskset exists); a dry run runs one module of it only
# Ctrl-C (or SIGTERM) stops every step, removes the scratch folder and exits 130.
set -uo pipefail
here=$PWD
cd "$(dirname "$0")/.."
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }

dry=0
case "${1:-}" in
  "") ;;
  --dry-run) dry=1 ;;
  *) fail "unknown argument ${1}; use --dry-run or nothing" ;;
esac
[ "$#" -le 1 ] || fail "one argument at most (--dry-run)"

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || fail "no Python at PYTHON=$PY; set PYTHON to the interpreter that has torch"
"$PY" -c "import torch" 2>/dev/null || fail "$PY cannot import torch; set PYTHON to the interpreter that has torch"
if [ "$dry" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  fail "torch sees no CUDA device here; run it on a GPU machine, or pass --dry-run"
fi
if [ -n "${OUT:-}" ] && [ "${OUT#/}" = "$OUT" ]; then OUT="$here/$OUT"; fi
if [ "$dry" = 1 ]; then OUT=${OUT:-$(mktemp -d -t chargen-gpu-dry-run.XXXXXX)}; else OUT=${OUT:-$PWD/docs/results/gpu}; fi
mkdir -p "$OUT" 2>/dev/null || fail "cannot create $OUT; set OUT to a folder you can write"
: 2>/dev/null > "$OUT/steps.tsv" || fail "cannot write in $OUT; set OUT to a folder you can write"
work=$(mktemp -d -t chargen-gpu-check.XXXXXX)
kids=()  # the steps running now (each a timeout process, which passes a signal on to its command)
smi=""
cleanup() { [ -n "$smi" ] && kill "$smi" 2>/dev/null; rm -rf "$work"; }
interrupted() {
  trap - INT TERM
  for pid in "${kids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null
  cleanup
  echo "gpu_check: interrupted; the outputs so far are in $OUT" >&2
  exit 130
}
trap cleanup EXIT
trap interrupted INT TERM
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CHARGEN_CACHE="$work/cache" CHARGEN_OFFLINE=1
budget=480  # seconds for the whole check: the time-to-quality run gets what the steps before it left

if [ "$dry" = 1 ]; then
  device=cpu
  export CUDA_VISIBLE_DEVICES=""
  train_args=(--preset tiny --steps 3 --warmup 1 --rounds 1)
  decode_args=(--sizes 1x32 --rounds 1)
  cells_args=(--hidden 16 --lengths 8,32 --chars 256 --rounds 1)
  # an evaluation of 16k characters fits the 10 s budget even with the CPU tests beside it (the default
  # 128k could take over half the budget on a loaded 2-core machine, and then the run kept no best)
  tq_preset=tiny; tq_seconds=10; tq_args=(--eval-chars 16384)
  cpu_tests=(tests/model/test_precision.py)  # the suite runs this dry run: one module, never itself again
else
  device=cuda
  train_args=(--preset gpu --steps 50 --warmup 10 --rounds 3)
  decode_args=(--sizes 3x512 --rounds 3)
  cells_args=(--hidden 512 --lengths 64,256,1024 --chars 65536 --rounds 3)
  tq_preset=gpu; tq_seconds=240; tq_args=()
  cpu_tests=(-m "not gpu")
  "$PY" -c "import xdist" 2>/dev/null && cpu_tests+=(-n 8)
fi

# start NAME LIMIT COMMAND...: run it in the background (so that a signal reaches the trap at once), its
# output appended to $OUT/NAME.txt; finish NAME waits for it and records its status in steps.tsv.
declare -A pid_of began_at what
start() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >> "$OUT/$name.txt"
  timeout -k 10 "$limit" "$@" >> "$OUT/$name.txt" 2>&1 &
  pid_of[$name]=$!; began_at[$name]=$SECONDS; what[$name]="$*"
  kids+=("$!")
}
finish() {
  local name=$1 rc
  wait "${pid_of[$name]}"
  rc=$?
  printf '%s\t%s\t%ss\t%s\n' "$name" "$rc" "$((SECONDS - began_at[$name]))" "${what[$name]}" >> "$OUT/steps.tsv"
  echo "[$SECONDS s] $name: exit $rc"
}
step() { start "$@"; finish "$1"; }

echo "gpu_check: device $device, outputs in $OUT"
: > "$OUT/env.txt"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$OUT/env.txt" 2>&1
fi
step env 45 "$PY" scripts/gpu_env.py --device "$device"

: > "$OUT/tests_gpu.txt"
step tests_gpu 75 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests

: > "$OUT/train_throughput.txt"
for precision in fp32 bf16 fp16; do
  if [ "$device" = cpu ] && [ "$precision" = fp16 ]; then
    echo "== fp16: skipped (it needs CUDA)" >> "$OUT/train_throughput.txt"; continue
  fi
  step train_throughput 40 "$PY" scripts/bench_train.py --device "$device" --precision "$precision" "${train_args[@]}"
done

: > "$OUT/decode.txt"
step decode 60 "$PY" scripts/bench_sample.py --device "$device" "${decode_args[@]}"

: > "$OUT/cells.txt"
step cells 60 "$PY" scripts/bench_cells.py --device "$device" "${cells_args[@]}"

# Time to quality, with the CPU suite beside it and nvidia-smi sampling the GPU each second.
source_args=(tinyshakespeare)
if ! ls "${CHARGEN_CORPORA:-/nonexistent}"/tinyshakespeare.txt >/dev/null 2>&1; then
  source_args=()
  echo "tinyshakespeare.txt not found on CHARGEN_CORPORA: training on the embedded default corpus" > "$OUT/time_to_quality.txt"
else
  : > "$OUT/time_to_quality.txt"
fi
left=$((budget - SECONDS - 45))
if [ "$left" -lt "$tq_seconds" ]; then
  echo "the steps before took $SECONDS s: time to quality gets ${left} s, not ${tq_seconds}" >> "$OUT/time_to_quality.txt"
  tq_seconds=$((left > 5 ? left : 5))
fi
if command -v nvidia-smi >/dev/null && [ "$dry" = 0 ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw --format=csv -l 1 \
    > "$OUT/utilisation.csv" 2>&1 &
  smi=$!
else
  echo "no nvidia-smi sampling (no GPU here)" > "$OUT/utilisation.csv"
fi
pin_train=(); pin_tests=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 8 ]; then
  pin_train=(taskset -c 0-3); pin_tests=(taskset -c "4-$(($(nproc) - 1))")
fi
: > "$OUT/tests_cpu.txt"
start tests_cpu $((tq_seconds + 40)) env CUDA_VISIBLE_DEVICES= "${pin_tests[@]}" "$PY" -m pytest -q -p no:cacheprovider \
  "${cpu_tests[@]}"
step time_to_quality $((tq_seconds + 40)) "${pin_train[@]}" "$PY" -m chargen train "${source_args[@]}" \
  --out "$work/tq" --preset "$tq_preset" --device "$device" --max-time "${tq_seconds}s" --no-progress "${tq_args[@]}"
[ -n "$smi" ] && kill "$smi" 2>/dev/null
smi=""
cp "$work/tq/metrics.jsonl" "$OUT/time_to_quality_metrics.jsonl" 2>/dev/null
"$PY" -m chargen info "$work/tq" >> "$OUT/time_to_quality.txt" 2>&1
finish tests_cpu

echo
echo "== steps (name, exit status, seconds): $OUT/steps.tsv"
cut -f1-3 "$OUT/steps.tsv"
echo "== figures"
grep -h "^median:" "$OUT/train_throughput.txt"
grep -h "one stream:\|n=64 \|64 streams\|CUDA graph" "$OUT/decode.txt"
grep -h "^lstm\|^gru\|^rnn\|^min" "$OUT/cells.txt"
grep -h "^trained \|best validation" "$OUT/time_to_quality.txt"
tail -n 1 "$OUT/tests_gpu.txt" "$OUT/tests_cpu.txt"
if awk -F'\t' '$2 != 0 {bad = 1} END {exit !bad}' "$OUT/steps.tsv"; then
  echo "gpu_check: some steps failed (see steps.tsv)"; exit 1
fi
echo "gpu_check: every step passed"
