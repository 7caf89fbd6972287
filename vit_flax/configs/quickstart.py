"""A small ViT on Fashion-MNIST that 2 CPU cores train in minutes.

python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.get_config()
  config.dataset = 'fashion_mnist'  # Offline from Debian's IDX files.
  config.pp.crop = 28  # Native size: 4x4 patches of 7x7 pixels.
  # Mirrored clothes are still clothes; padded crops cost more accuracy
  # than they saved here.
  config.pp.augment = 'flip'
  # Random erasing (a noise rectangle in half of the images) lets the model
  # train longer and wider before it overfits (docs/experiments.md).
  config.pp.random_erase = 0.5
  config.shuffle_buffer = 60_000  # The whole training set.

  config.model = presets.vit_config(
      'quickstart', patch=7, hidden_size=96, mlp_dim=192, num_heads=4,
      num_layers=4,
      # Mean of the patch tokens, no class token, as big_vision's plain ViT.
      classifier='gap')
  # A depthwise 3x3 conv over the 4x4 patch grid in every MLP (arXiv
  # 2211.05187): locality that small data does not teach a ViT.
  config.model.locality = True

  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 2e-3
  config.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.batch = 256
  config.batch_eval = 1000
  config.total_steps = 5_000  # 21 epochs.
  config.warmup_steps = 250
  config.eval_every = 1_000
  config.progress_every = 200
  config.checkpoint_every = 1_000
  return config.lock()
