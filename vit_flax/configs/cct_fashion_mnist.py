"""A CCT (CCT-2/3x2) on Fashion-MNIST, trained on 2 CPU cores.

CCT's smallest model (arXiv 2104.05704; 0.28M parameters on CIFAR-10): a
tokenizer of two [3x3 conv, ReLU, 3x3/2 max-pool] layers (64, then 128
channels) makes a 7x7 grid of tokens of the 28 px image, then 2 blocks of
width 128 (2 heads, MLP 128), SeqPool and the head. CCT's block and
regularisation as the preset (presets.cct_config). Data, augmentation,
optimizer and schedule are those of the Fashion-MNIST configs
(`common.fashion_mnist_training`), not tuned for this model.

python main.py --config=configs/cct_fashion_mnist.py --workdir=/tmp/cct_fm
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model = presets.get_model_config('CCT-2/3x2')
    config.model.model_name = 'cct_fashion_mnist'
  return config.lock()
