"""A ResNet-8 at half width: the CNN that a CPU trains as fast as the ViT.

The CNN baseline of configs/quickstart_patchify.py where configs/resnet_quickstart.py
(BiT-R18, CIFAR stem: 864 MFLOPs per image) is far too slow for a CPU. The
BiT units (GroupNorm, weight-standardised convs), with three stages of one
basic unit each at widths 32, 64 and 128, and the ImageNet stem: its
7x7/2 conv and 3x3/2 max-pool turn a 28 px image into a 7x7 grid, as the
ViT's 7 px patches turn it into a 4x4 grid; the stages then run at 7, 4 and
2 px. 312k parameters and 8.0 MFLOPs per image, against the ViT quickstart's
324k and 10.8 MFLOPs. Same data, optimizer and schedule as the ViT. configs/cnn_quickstart.py is
this network tuned (GroupNorm of 8 groups, its own learning rate).

python main.py --config=configs/resnet8_quickstart.py --workdir=/tmp/resnet8
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()  # Data, optimizer, schedule.
  with config.unlocked():
    config.model_type = 'resnet'
    # Units per stage (1, 1, 1): 1 stem + 3 x 2 convs + 1 head = 8 layers.
    config.model = presets.resnet_config(
        'ResNet-8x0.5', num_layers=(1, 1, 1), bottleneck=False,
        width_factor=0.5, stem='imagenet')
  return config.lock()
