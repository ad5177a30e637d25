#!/usr/bin/env bash
# Every GPU measurement of ptxseg in one prepared run: under 7 minutes on one H100 or H200.
#
#   bash benchmarks/gpu.sh [DICOM_DIR] [--with-tests]
#
# Stages (ptxseg benchmark-gpu; each writes benchmarks/results/gpu-<stage>.md and .csv), in the
# order they run: what the open targets need first, the settled ones last
#   pipeline   predict around a stand-in model (everything but the network), 1 or 8 files per
#              message to a worker process
#   serve      seconds until `ptxseg serve` answers, first request
#   predict    `ptxseg predict` on DICOMs: CPU decode vs nvJPEG, eager vs compiled, overlays or
#              not, the model's masks or every mask empty; images/s end to end, time to the
#              first result, where start-up and main loop spent their time, Dice against fp32
#   train      `ptxseg train` end to end before (eager, NCHW, loader augmentation) and now
#              (compiled, channels_last, bf16, augmentation on the GPU), and the model alone
#   writes     predict's writer processes alone: empty, one-lesion and noisy masks
#   prepare    CPU process pool against nvJPEG + GPU resize, and how far the caches differ
#   backbones  inference/training images/s: eager NCHW fp32/bf16, channels_last, compiled,
#              compiled with CUDA graphs
# DICOM_DIR: real SIIM DICOMs for the predict stage (a few are enough: they are repeated to
# 1024 files); default: synthetic ones from `ptxseg synth`. --with-tests also runs the tests
# marked `gpu` first.
#
# The machine needs the PyTorch stack (torch, torchvision, Lightning, timm, OpenCV, numpy, typer,
# rich, matplotlib) and nothing from the internet: ptxseg runs from src/, and the packages it
# lacks there come from wheels in .whl/ (scripts/fetch-gpu-wheels.sh downloads them). Where a
# variable OUT names a folder, the tables and a tarball of the logs are copied there.
# BENCH_ARGS (see below) passes more options to `ptxseg benchmark-gpu`.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
dicoms=""
tests=0
for arg in "$@"; do
  case "$arg" in
    --with-tests) tests=1 ;;
    *) dicoms="$arg" ;;
  esac
done
started=$(date +%s)

if ! "$python" -c "import segmentation_models_pytorch, pydicom" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "segmentation-models-pytorch or pydicom is missing and .whl/ holds no wheels:" >&2
    echo "run scripts/fetch-gpu-wheels.sh where pip reaches PyPI, and bring .whl/ along" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/ptxseg-site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'GPU available:', torch.cuda.is_available())"

if [ "$tests" = 1 ]; then
  if [ -n "$dicoms" ]; then export PTXSEG_SIIM_REAL="$dicoms"; fi
  timeout 150 "$python" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -25
fi

# What is left of the 7 minutes goes to the benchmark: no stage (and no predict run) starts
# after its budget, and the last minute is for the stage in flight. Skipped parts say so in the
# tables; BENCH_ARGS="--stages writes,prepare,backbones" runs the rest on their own.
left=$(( 410 - ($(date +%s) - started) ))
budget=$(( left - 60 ))
args=(--out benchmarks/results --budget "$budget")
if [ -n "$dicoms" ]; then args+=(--dicoms "$dicoms"); fi
# BENCH_ARGS adds options, e.g. a rehearsal on a CPU at toy sizes:
#   BENCH_ARGS="--device cpu --images 24 --distinct 12 --source-size 128 --size 64
#   --encoder resnet18 --batch-size 4 --train-batches 2" bash benchmarks/gpu.sh
read -r -a extra <<< "${BENCH_ARGS:-}"
args+=("${extra[@]}")
timeout "$left" "$python" -m ptxseg benchmark-gpu "${args[@]}"
status=$?

echo "== tables (benchmarks/results/gpu-*.md) after $(( $(date +%s) - started )) s"
for table in benchmarks/results/gpu-*.md; do
  [ -f "$table" ] && sed -n '1p;3p;5,$p' "$table" && echo
done
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp benchmarks/results/gpu-*.md "$OUT"/ 2>/dev/null
  tar -czf "$OUT/gpu-logs.tar.gz" -C /tmp/ptxseg-gpu-bench logs 2>/dev/null
fi
exit $status
