"""ResNet-18 on Fashion-MNIST: the CNN baseline to configs/quickstart.py.

Same data, optimizer and schedule as the ViT quickstart; the model is the
BiT-R18 preset (GroupNorm, weight-standardised convs) with a CIFAR-style
stem, since the ImageNet stem would shrink 28 px images to 7 px at once. It
costs about 140x the ViT quickstart per step (11.2M parameters): minutes on an
accelerator, hours on a CPU; --config.model.width_factor=0.5 halves that.

python main.py --config=configs/resnet_quickstart.py --workdir=/tmp/resnet_qs
"""

from configs import common
from vit_flax import model_configs


def get_config():
  config = common.get_config()
  config.dataset = 'fashion_mnist'  # Offline from Debian's IDX files.
  config.pp.crop = 28  # Native size.
  config.pp.augment = 'none'  # As the ViT quickstart.
  config.shuffle_buffer = 60_000  # The whole training set.

  config.model_type = 'resnet'
  config.model = model_configs.get_model_config('BiT-R18')
  config.model.stem = 'cifar'  # 3x3/1 conv, no max-pool: 28-7 px stages.

  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 2e-3
  config.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.batch = 256
  config.batch_eval = 1000
  config.total_steps = 4_000
  config.warmup_steps = 200
  config.eval_every = 1_000
  config.progress_every = 200
  config.checkpoint_every = 1_000
  return config.lock()
