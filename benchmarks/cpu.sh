#!/bin/sh
# The CPU rows of the README's benchmark table; each writes benchmarks/cpu_*.json.
# Run from the repository root on a quiet machine (check `uptime`): ~18 minutes
# on 2 cores. CIFAR-10 needs a download, so the reduced config reads the
# offline Fashion-MNIST instead (28 px scaled to 64 px, same augmentation).
set -e
# With tcmalloc, as the README trains on CPUs; `LD_PRELOAD= sh
# benchmarks/cpu.sh` runs every row with glibc malloc instead. The *_glibc rows
# always use glibc malloc.
if [ -z "${LD_PRELOAD+set}" ]; then
  export LD_PRELOAD=libtcmalloc_minimal.so.4
fi
run() {
  name=$1
  shift
  python -m vit_flax.bench.benchmark "$@" --json_out="benchmarks/cpu_$name.json"
}
run_glibc() {
  (export LD_PRELOAD=; run "$@")  # A subshell: later rows keep tcmalloc.
}
run quickstart --config=configs/quickstart.py --steps=30 --rounds=10
run_glibc quickstart_glibc --config=configs/quickstart.py --steps=30 --rounds=10
# Peaks at about 15 GB of RSS under tcmalloc (docs/benchmarks.md, "Memory of
# locality"); the earlier locality conv's 13 GB buffer needed glibc here.
run reduced --config=configs/vit_b16_reduced.py --config.dataset=fashion_mnist \
  --config.batch_eval=256 --steps=2 --rounds=2 --eval_steps=1 \
  --pipeline_batches=10
run ti16 --config=benchmarks/preset.py:ViT-Ti_16 --steps=5 --rounds=3 \
  --eval_steps=2
run s16 --config=benchmarks/preset.py:ViT-S_16 --steps=3 --rounds=4 \
  --eval_steps=1
run b16 --config=benchmarks/preset.py:ViT-B_16 --config.batch=16 \
  --config.batch_eval=16 --steps=2 --rounds=3 --eval_steps=1
run b16_bf16 --config=benchmarks/preset.py:ViT-B_16 --config.batch=16 \
  --config.batch_eval=16 --config.model.dtype=bfloat16 --steps=2 --rounds=3 \
  --eval_steps=1 --synthetic_only
run_glibc b16_glibc --config=benchmarks/preset.py:ViT-B_16 --config.batch=16 \
  --config.batch_eval=16 --steps=2 --rounds=3 --eval_steps=1
