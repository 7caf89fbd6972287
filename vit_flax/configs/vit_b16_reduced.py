"""The reduced ViT (ViT-S width, 8x8 patches, 6 blocks) from scratch on CIFAR-10.

The recipe of arXiv 2211.05187 for small compute (locality: a depthwise conv
in every MLP; an image-size curriculum 32 -> 48 -> 64 px) with the
data-efficient training of DeiT (arXiv 2012.12877) and of "Vision
Transformer for Small-Size Datasets" (arXiv 2112.13492): RandAugment(2, 9),
mixup 0.8 and CutMix 1.0, random erasing 0.25, label smoothing 0.1,
stochastic depth 0.1, and an EMA of the weights.

python main.py --config=configs/vit_b16_reduced.py --workdir=/tmp/reduced
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.get_config()
  config.dataset = 'cifar10'
  config.pp.train = 'train'
  config.pp.test = 'test'
  config.pp.crop = 64  # Final and evaluation size: an 8x8 grid of patches.
  config.pp.curriculum = ((0, 32), (40, 48), (70, 64))  # (epoch, size).
  config.pp.curriculum_unit = 'epochs'
  config.pp.augment = 'pad_crop_flip'
  config.pp.randaugment = (2, 9)
  config.pp.random_erase = 0.25
  config.mixup = 0.8
  config.cutmix = 1.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.9998

  config.model = presets.get_model_config('ViT-S_8-depth6')
  config.model.locality = True
  config.model.transformer.stochastic_depth = 0.1

  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.weight_decay = 0.05
  config.batch = 256
  config.batch_eval = 1000
  config.total_steps = 19_500  # About 100 epochs of CIFAR-10.
  config.warmup_steps = 1_000
  config.eval_every = 1_000
  config.progress_every = 100
  config.checkpoint_every = 1_000
  return config.lock()
