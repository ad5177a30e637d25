#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu.sh installs on a GPU machine without internet.
#
# That machine has the PyTorch stack (torch, torchvision, Lightning, timm, OpenCV, numpy, typer,
# rich, matplotlib, safetensors, huggingface-hub) for Python 3.12 on x86-64 Linux, but not the
# packages below. Run this once where pip reaches PyPI; the wheels land in .whl/ (ignored by git)
# and travel with the working tree. The versions are those the test suite passes with.
#
#   scripts/fetch-gpu-wheels.sh            # into .whl/
#   scripts/fetch-gpu-wheels.sh DIR        # into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
python="${PYTHON:-python3}"

# ptxseg itself: the U-Net, DICOM reading (and its JPEG plugins for non-Baseline files).
core=(
  segmentation-models-pytorch==0.6.0
  pydicom==3.0.2
  pylibjpeg==2.1.0
  pylibjpeg-libjpeg==2.5.0
)
# `ptxseg serve`, for the serve stage's start-up measurement.
serve=(
  fastapi==0.165.0
  starlette==1.10.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  annotated-doc==0.0.7
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  opentelemetry-api==1.45.2
  uvicorn==0.54.0
  python-multipart==0.0.34
)

mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_35_x86_64 \
  -d "$dest" "${core[@]}" "${serve[@]}"
ls -l "$dest"
du -sh "$dest"
