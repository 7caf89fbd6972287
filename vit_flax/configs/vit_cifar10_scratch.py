"""A plain ViT trained from scratch on CIFAR-10 with the small-data recipe.

The baseline ViT of "Vision Transformer for Small-Size Datasets" (Lee, Lee
and Song, arXiv 2112.13492), whose authors report 93.58% top-1 on CIFAR-10
for it (their figure, not one measured here): 4x4 patches of 32 px images
(an 8x8 grid and a class token), 9 blocks of width 192 with 12 heads and an
MLP of 384, trained 100 epochs at batch 128 with AdamW (lr 1e-3, weight decay
0.05, 10 warm-up epochs, cosine), label smoothing 0.1, mixup 0.8 and CutMix
1.0, RandAugment, random erasing 0.25 and stochastic depth 0.1.

python main.py --config=configs/vit_cifar10_scratch.py --workdir=/tmp/c10
"""

from vit_flax.configs import common
from vit_flax.models import presets

EPOCHS = 100
TRAIN_EXAMPLES = 50_000


def get_config():
  config = common.get_config()
  config.dataset = 'cifar10'
  config.pp.crop = 32
  config.pp.augment = 'pad_crop_flip'  # 4 px padding, random crop, flips.
  config.pp.randaugment = (2, 9)
  config.pp.random_erase = 0.25
  config.mixup = 0.8
  config.cutmix = 1.0
  config.label_smoothing = 0.1

  config.model = presets.vit_config(
      'ViT-small-data', patch=4, hidden_size=192, mlp_dim=384, num_heads=12,
      num_layers=9)
  config.model.transformer.stochastic_depth = 0.1

  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.weight_decay = 0.05
  config.batch = 128
  config.batch_eval = 500
  config.total_steps = EPOCHS * TRAIN_EXAMPLES // config.batch
  config.warmup_steps = 10 * TRAIN_EXAMPLES // config.batch
  config.eval_every = 2_000
  config.progress_every = 200
  config.checkpoint_every = 2_000
  return config.lock()
