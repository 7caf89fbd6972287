"""Convolution stages, then transformer blocks (C-C-T) on Fashion-MNIST.

CoAtNet's layout (arXiv 2106.04803) at the first quickstart's scale: a small BiT
root (the hybrid ViT's `model.resnet`) of a 3x3/1 stem and two stages of one
basic unit (16 channels at 28x28, 32 at 14x14; GroupNorm of 8 groups), a 2x2
patch embedding of its feature map (a 7x7 grid, 49 tokens), then the
first quickstart's 4 transformer blocks of width 96 with the mean of the tokens
as the representation. Data, augmentation, optimizer and schedule are the
Fashion-MNIST configs' (`common.fashion_mnist_training`), not tuned for
this model.

python main.py --config=configs/hybrid_fashion_mnist.py --workdir=/tmp/hybrid
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model = presets.vit_config(
        'hybrid_fashion_mnist',
        patch=2,  # Of the root's 14x14 feature map: a 7x7 grid.
        hidden_size=96, mlp_dim=192, num_heads=4, num_layers=4,
        classifier='gap', resnet_layers=(1, 1))
    config.model.resnet.width_factor = 0.25  # 16, then 32 channels.
    config.model.resnet.stem = 'cifar'  # One 3x3/1 conv, no pool.
    config.model.resnet.bottleneck = False  # Basic units.
    config.model.resnet.norm_groups = 8
  return config.lock()
