"""The first quickstart: a plain patchify ViT on Fashion-MNIST.

Patches of 7x7 pixels (a 4x4 grid), 4 blocks of width 96 with a depthwise
3x3 conv in every MLP, the mean of the tokens as the representation, and
the Fashion-MNIST recipe of `common.fashion_mnist_training`. It was the
quickstart until the study of docs/vit_vs_resnet.md replaced it by a
transformer with a convolutional tokenizer (configs/quickstart.py); the
studies and configs built on it (the data-efficient recipe, SPT/LSA,
distillation, the patch-size, curriculum and locality studies) keep it.

python main.py --config=quickstart_patchify --workdir=/tmp/quickstart_patchify
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  config.model = presets.vit_config(
      'quickstart_patchify', patch=7, hidden_size=96, mlp_dim=192,
      num_heads=4, num_layers=4,
      # Mean of the patch tokens, no class token, as big_vision's plain ViT.
      classifier='gap')
  # A depthwise 3x3 conv over the 4x4 patch grid in every MLP (arXiv
  # 2211.05187): locality that small data does not teach a ViT.
  config.model.locality = True
  return config.lock()
