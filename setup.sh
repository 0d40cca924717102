#!/usr/bin/env bash
# Set up the zoo on a fresh machine, into the current Python environment (use a virtualenv if you
# like: python3 -m venv .venv && . .venv/bin/activate && ./setup.sh).
#
# On a machine without an NVIDIA GPU it first installs PyTorch's CPU build, so that the
# project's torch range does not pull several GB of CUDA packages; with a GPU, pip picks the
# default (CUDA) build. An installed torch that satisfies the range is kept.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_CPU_VERSION=${ZOO_TORCH_VERSION:-2.13.0}

if ! $PY -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if v >= (2, 5) else 1)" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found; installing the default (CUDA) torch build"
    $PY -m pip install "torch>=2.5,<3"
  else
    echo "setup: no GPU found; installing the CPU build of torch $TORCH_CPU_VERSION"
    $PY -m pip install "torch==$TORCH_CPU_VERSION" \
      || $PY -m pip install "torch==$TORCH_CPU_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# setuptools >= 64 for editable installs of this layout (core/ -> zoo, plugins/ -> zoo_plugins)
$PY -m pip install "setuptools>=64" wheel
# the hf extra (transformers, ~15 s and ~160 MB) lets the parity tests against transformers run
$PY -m pip install -e ".[test,hf]"
$PY -m zoo --version
