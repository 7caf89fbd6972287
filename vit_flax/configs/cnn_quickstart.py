"""The CNN baseline of the quickstart: a small ResNet on Fashion-MNIST.

BiT units (weight-standardised convs, GroupNorm of 8 groups), the ImageNet
stem (7x7/2 conv, 3x3/2 max-pool: the 28 px image becomes a 7x7 grid, as the
ViT's patches make a 4x4 one), then three stages of one basic unit at widths
32, 64 and 128. 312k parameters and 8.0 MFLOPs per image, against the
first quickstart's 324k and 10.8 (configs/quickstart_patchify.py). It trains
with that ViT's data, augmentation, optimizer and schedule
(`common.fashion_mnist_training`) at its own peak learning rate.
Architecture and learning rate are the best of the equal-wall-clock sweep of
experiments/cnn_baseline.py (docs/cnn_baseline.md, docs/cnn_baseline_lr.md);
docs/vit_vs_resnet.md sets it against the ViTs.

python main.py --config=configs/cnn_quickstart.py --workdir=/tmp/cnn
"""

from vit_flax.configs import common
from vit_flax.models import presets


def get_config():
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model_type = 'resnet'
    config.model = presets.resnet_config(
        'ResNet-imagenet_111_x0.5_gn8', num_layers=(1, 1, 1),
        bottleneck=False, width_factor=0.5, stem='imagenet', norm_groups=8)
    # The sweep's best; it rose from 1e-3 to 8e-3, the largest tried.
    config.base_lr = 8e-3
  return config.lock()
