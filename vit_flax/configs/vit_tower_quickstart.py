"""The constant-width ("tower") twin of configs/vit_staged_quickstart.py.

A plain ViT with the staged model's depth (4 blocks), MLP ratio (2) and
patches (7x7), its width chosen so that the parameter counts match: 342k
here, 354k (pool) and 352k (linear) there. Same data and recipe as
configs/quickstart_patchify.py.

python main.py --config=configs/vit_tower_quickstart.py --workdir=/tmp/tower
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model_type = 'vit'  # models.VisionTransformer: one width.
    config.model = presets.vit_config(
        'tower_quickstart', patch=7, hidden_size=100, mlp_dim=200,
        num_heads=4, num_layers=4)
  return config.lock()
