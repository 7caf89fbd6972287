"""The CNN baseline of the quickstart: a CIFAR-style ResNet on Fashion-MNIST.

BiT units (weight-standardised convs, GroupNorm) after a CIFAR stem (one
3x3 conv, no max-pool), stages of basic units at 28, 14 and 7 px (widths
16, 32, 64). It is sized to the ViT quickstart: 2.3x its FLOPs per image
and half its parameters (tests/test_experiments.py keeps both within 3x),
and it trains with the ViT's data, augmentation, optimizer and schedule
(configs/quickstart.py). docs/vit_vs_resnet.md measures both.

python main.py --config=configs/cnn_quickstart.py --workdir=/tmp/cnn
"""

from configs import quickstart
from vit_flax import model_configs


def get_config():
  config = quickstart.get_config()  # Data, augmentation, optimizer, schedule.
  with config.unlocked():
    config.model_type = 'resnet'
    config.model = model_configs.resnet_config(
        'ResNet-cifar-quickstart', num_layers=(1, 1, 2), bottleneck=False,
        width_factor=0.25, stem='cifar', norm_groups=8)
  return config
