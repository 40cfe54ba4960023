#!/usr/bin/env bash
# One prepared GPU check, at most 9 minutes on one H100/H200, in priority order, each step time-boxed:
#   1. the `gpu` test marker (pytest -m gpu)
#   2. the layer benchmark of the pooling backends against avg_pool2d (timm-asap benchmark-layers --backends)
#   3. benchmark-models: bf16, channels_last, eager and compiled; resnet50 family at batch 32 and 256;
#      resnet18_cifar family at 32 px
#   4. torch.profiler: where resnet50_asap's and resnet18_cifar_asap's extra time goes (pooling kernels)
#   5. the study, --preset gpu, with the time left (fewer seeds when less is left; the study says so)
# Results land in OUT as each step finishes, at most 8 small files:
#   status.md, status.json (every step: status, seconds, command, captured tables), layers.json (the backend
#   winners table), models.md,
#   models.json, profile.md, profile.json, study.md. Bulky work files (runs, Hub folders) go to a scratch folder.
#
# Usage: scripts/gpu_check.sh [--cpu] [--data DIR] [--out DIR] [--budget SECONDS]
#   --data DIR    the four Fashion-MNIST IDX .gz files (default: $FMNIST_DIR, else data/fashion-mnist, else
#                 Debian's /usr/share/datasets/fashion-mnist)
#   --out DIR     results folder (default: gpu_check_out)
#   --budget S    total seconds (default: 540; 115 with --cpu)
#   --cpu         tiny sizes on the CPU (what CI runs, under 2 minutes), to know the script works
# Environment: PYTHON (default python3), FMNIST_DIR.
# Installs the project without downloads (pip --no-deps --no-build-isolation -e ., else PYTHONPATH).
# Exit status: 0 every step ran (ok, or stopped by its time box, or skipped for lack of time); 1 a step failed
# or could not start (results of the others are still written); 2 bad arguments, no data, or an interpreter
# (PYTHON) that cannot import torch, timm, pytest and the project (one line, before anything runs).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=gpu
OUT=gpu_check_out
DATA=${FMNIST_DIR:-}
BUDGET=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --data) DATA=$2; shift ;;
    --out) OUT=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'; allowed: --cpu, --data DIR, --out DIR, --budget SECONDS" >&2; exit 2 ;;
  esac
  shift
done
BUDGET=${BUDGET:-$([ "$MODE" = cpu ] && echo 115 || echo 540)}
if [ -z "$DATA" ]; then
  for d in data/fashion-mnist /usr/share/datasets/fashion-mnist; do [ -f "$d/t10k-labels-idx1-ubyte.gz" ] && DATA=$d && break; done
fi
if [ -z "$DATA" ] || [ ! -f "$DATA/train-images-idx3-ubyte.gz" ] || [ ! -f "$DATA/t10k-images-idx3-ubyte.gz" ]; then
  echo "gpu_check.sh: no Fashion-MNIST IDX files (train-/t10k-images-idx3-ubyte.gz, -labels-idx1-ubyte.gz) in '${DATA:-?}'; give --data DIR or FMNIST_DIR" >&2
  exit 2
fi
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# the interpreter first: every step runs with it, and one that cannot import what they need runs nothing
if ! command -v ${PY%% *} >/dev/null 2>&1; then
  echo "gpu_check.sh: the interpreter '$PY' was not found; set PYTHON to the project's python (e.g. PYTHON=.venv/bin/python)" >&2
  exit 2
fi
if ! PY_ERROR=$($PY -c 'import torch, timm, pytest, timm_asap, timm_asap_lab.cli' 2>&1); then
  echo "gpu_check.sh: the interpreter '$PY' ($(command -v ${PY%% *})) cannot run the check ($(printf '%s\n' "$PY_ERROR" | tail -n 1)); set PYTHON to a python with torch, timm and pytest installed (e.g. PYTHON=.venv/bin/python)" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")
LOG="$WORK/steps.jsonl"
: > "$LOG"

# install without downloads (GPU mode); PYTHONPATH keeps it working where pip cannot write, and in CPU mode
if [ "$MODE" = gpu ]; then $PY -m pip install --no-deps --no-build-isolation -q -e . >"$WORK/install.log" 2>&1 || true; fi
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
if [ "$MODE" = cpu ]; then export CUDA_VISIBLE_DEVICES=""; fi

RESERVE=$([ "$MODE" = cpu ] && echo 40 || echo 200)  # seconds kept for the study while earlier steps run
left() { echo $(( BUDGET - SECONDS )); }

FAILED=()  # steps that failed or could not start (or whose result could not be recorded): exit status 1

# record ARGS...: gpu_check_record.py; a failure to record is a failure of the check
record() { $PY "$ROOT/scripts/gpu_check_record.py" "$@" || FAILED+=("recording ($2)"); }

# step NAME TIMEOUT_S CMD...: run CMD with a time box, record status, seconds and the output's tail
step() {
  local name=$1 limit=$2; shift 2
  local have; have=$(left)
  if [ "$have" -lt 10 ]; then
    record "$LOG" "$name" "skipped: no time left" 0 /dev/null "$*"
    return
  fi
  [ "$name" != study ] && have=$((have - RESERVE))
  [ "$limit" -gt "$((have - 5))" ] && limit=$((have - 5))
  [ "$limit" -lt 5 ] && limit=5
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timed out after ${limit} s"
  [ $rc -eq 5 ] && [ "$name" = gpu_tests ] && status="ok (no gpu tests selected)"  # pytest: nothing collected
  { [ $rc -eq 126 ] || [ $rc -eq 127 ]; } && status="could not start (exit $rc: $(tail -n 1 "$WORK/$name.out"))"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  case "$status" in failed*|could*) FAILED+=("$name: $status"); echo "gpu_check: step $name $status" >&2 ;; esac
  record "$LOG" "$name" "$status" "$((SECONDS - t0))" "$WORK/$name.out" "$*"
  record --write "$LOG" "$OUT" "$MODE" "$BUDGET" >/dev/null
}

if [ "$MODE" = cpu ]; then
  step gpu_tests 30 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_evaluation.py
  step layers 30 $PY -m timm_asap_lab.cli.main benchmark-layers --device cpu --backends two_product,kronecker,triton --tiny \
    --json "$OUT/layers.json" --output "$WORK/layer_rows.json"
  step models_resnet50 30 $PY -m timm_asap_lab.cli.main benchmark-models --device cpu --models resnet50_asap \
    --batch-size 2 --img-size 32 --rounds 1 --warmup 0 --compile off --no-cpu-memory --no-progress \
    --output-dir "$WORK/models_resnet50"
  step models_cifar 30 $PY -m timm_asap_lab.cli.main benchmark-models --device cpu --family resnet18_cifar \
    --batch-size 4 --rounds 1 --warmup 0 --compile off --no-cpu-memory --no-progress --output-dir "$WORK/models_cifar"
  step profile_cifar 30 $PY -m timm_asap_lab.cli.main benchmark-models --device cpu --profile --family resnet18_cifar \
    --models resnet18_cifar_asap --batch-size 4 --rounds 1 --output-dir "$WORK/profile_cifar"
  step study "$(left)" $PY -m timm_asap_lab.cli.main study --preset gpu --device cpu --families preactresnet18_w8 \
    --seeds 0 --epochs 1 --batch-size 64 --train-subset 256 --val-subset 64 --eval-count 64 --corruption-count 8 --attack-count 8 \
    --shift-count 16 --severities 1 --max-seconds "$(( $(left) - 10 ))" --data-dir "$DATA" --workers 0 \
    --output "$WORK/study" --no-progress
else
  step gpu_tests 75 $PY -m pytest -q -m gpu -p no:cacheprovider
  # layers.json is the winners table backend 'auto' reads: commit it as timm_asap/layers/backend_table.json
  step layers 100 $PY -m timm_asap_lab.cli.main benchmark-layers --device cuda --backends two_product,kronecker,triton \
    --cuda-dtypes bfloat16 --layouts channels_last contiguous --json "$OUT/layers.json" --output "$WORK/layer_rows.json"
  step models_resnet50 50 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --compile off --no-progress \
    --batch-size 32 --rounds 3 --output-dir "$WORK/models_resnet50"
  step models_resnet50_b256 50 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --compile off --no-progress \
    --batch-size 256 --rounds 2 --output-dir "$WORK/models_resnet50_b256"
  step models_cifar 60 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --family resnet18_cifar \
    --compile both --batch-size 512 --rounds 2 --no-progress --output-dir "$WORK/models_cifar"
  step models_resnet50_compiled 75 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --compile on \
    --models resnet50_asap --batch-size 256 --rounds 2 --no-progress --output-dir "$WORK/models_resnet50_compiled"
  step profile_resnet50 30 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --profile --models resnet50_asap \
    --batch-size 64 --rounds 3 --output-dir "$WORK/profile_resnet50"
  step profile_cifar 30 $PY -m timm_asap_lab.cli.main benchmark-models --device cuda --profile --family resnet18_cifar \
    --models resnet18_cifar_asap --batch-size 512 --rounds 3 --output-dir "$WORK/profile_cifar"
  step study "$(left)" $PY -m timm_asap_lab.cli.main study --preset gpu --max-seconds "$(( $(left) - 15 ))" \
    --data-dir "$DATA" --output "$WORK/study" --no-progress
fi
record --write "$LOG" "$OUT" "$MODE" "$BUDGET"
echo "gpu_check: results in $OUT ($(ls "$OUT" | wc -l) files); work files in $WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: ${#FAILED[@]} step(s) failed or could not start: $(IFS=';'; echo "${FAILED[*]}")" >&2
  exit 1
fi
