"""A staged ViT (width 64, then 128) on Fashion-MNIST, trained on 2 CPU cores.

Same data and recipe as configs/quickstart_patchify.py. The 4x4 patch grid is pooled
to 2x2 between the stages (PiT); --config.model.transition=linear keeps the
grid and projects the tokens instead. configs/vit_tower_quickstart.py is its
constant-width twin with the same parameter count (within 4%).

python main.py --config=configs/vit_staged_quickstart.py --workdir=/tmp/staged
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model_type = 'staged'  # models.staged.StagedVisionTransformer.
    config.model = presets.staged_config(
        'staged_quickstart',
        patch=7,  # 28px images: a 4x4 grid of 7x7-pixel patches.
        stages=(
            # (num_layers, hidden_size, num_heads, mlp_dim) per stage.
            (2, 64, 4, 128),  # 16 patches (+ class token) at width 64.
            (2, 128, 4, 256),  # 4 pooled patches at width 128.
        ),
        transition='pool')  # pool (PiT) | linear.
  return config.lock()
