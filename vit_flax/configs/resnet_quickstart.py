"""ResNet-18 on Fashion-MNIST: the CNN baseline to the first
quickstart (configs/quickstart_patchify.py).

Same data, optimizer and schedule as the ViT quickstart; the model is the
BiT-R18 preset (GroupNorm, weight-standardised convs) with a CIFAR-style
stem, since the ImageNet stem would shrink 28 px images to 7 px at once. It
costs about 140x the ViT quickstart per step (11.2M parameters): minutes on an
accelerator, hours on a CPU; --config.model.width_factor=0.5 halves that.

python main.py --config=configs/resnet_quickstart.py --workdir=/tmp/resnet_qs
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()  # Data, optimizer, schedule.
  with config.unlocked():
    config.model_type = 'resnet'
    config.model = presets.get_model_config('BiT-R18')
    config.model.stem = 'cifar'  # 3x3/1 conv, no max-pool: 28-7 px stages.
  return config.lock()
