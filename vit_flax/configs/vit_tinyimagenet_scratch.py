"""A plain ViT trained from scratch on Tiny-ImageNet with the small-data recipe.

The recipe of configs/vit_cifar10_scratch.py at 64 px with 8x8 patches (an
8x8 grid), as in "Vision Transformer for Small-Size Datasets" (arXiv
2112.13492), whose authors report 57.07% top-1 on Tiny-ImageNet for this
ViT (their figure, not one measured here). Tiny-ImageNet is not in TFDS:
give a folder of images `{train,test}/<class>/<file>` (the validation images
sorted into class folders serve as the test split):

python main.py --config=configs/vit_tinyimagenet_scratch.py --workdir=/tmp/tin \
    --config.dataset=/data/tiny-imagenet-200
"""

from vit_flax.configs import vit_cifar10_scratch

EPOCHS = 100
TRAIN_EXAMPLES = 100_000


def get_config():
  config = vit_cifar10_scratch.get_config()
  with config.unlocked():
    config.dataset = '/data/tiny-imagenet-200'  # {train,test}/<class>/<img>.
    config.pp.crop = 64
    config.model.patches.size = (8, 8)
    config.total_steps = EPOCHS * TRAIN_EXAMPLES // config.batch
    config.warmup_steps = 10 * TRAIN_EXAMPLES // config.batch
  return config
