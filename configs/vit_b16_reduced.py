"""The reduced ViT-B (patch 8, 6 layers, width 384) from scratch on CIFAR-10.

With the recipe of arXiv 2211.05187 for small compute: locality (depthwise
conv in the MLP) and an image-size curriculum 32 -> 48 -> 64 px.

python main.py --config=configs/vit_b16_reduced.py --workdir=/tmp/reduced
"""

from configs import common
from vit_flax import model_configs


def get_config():
  config = common.get_config()
  config.dataset = 'cifar10'
  config.pp.train = 'train'
  config.pp.test = 'test'
  config.pp.crop = 64  # Final and evaluation size: an 8x8 grid of patches.
  config.pp.curriculum = ((0, 32), (40, 48), (70, 64))  # (epoch, size).
  config.pp.curriculum_unit = 'epochs'

  config.model = model_configs.get_model_config('ViT-S_8-depth6')
  config.model.locality = True

  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.batch = 256
  config.batch_eval = 1000
  config.total_steps = 19_500  # About 100 epochs of CIFAR-10.
  config.warmup_steps = 1_000
  config.eval_every = 1_000
  config.progress_every = 100
  config.checkpoint_every = 1_000
  return config.lock()
