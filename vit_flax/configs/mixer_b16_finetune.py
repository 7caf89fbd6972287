"""Fine-tunes the official ImageNet-21k Mixer-B/16, as vit_jax does.

The recipe of configs/vit_b16_finetune.py (SGD with momentum, base lr 0.03,
500 warm-up steps, cosine decay, clipping at 1.0, batch 512) at 224 px: the
Mixer's token-mixing MLPs are sized for the 14x14 patches of pre-training,
so it cannot be fine-tuned at another resolution. The argument picks the
data, from the same presets as the ViT:

python main.py --config=configs/mixer_b16_finetune.py:cifar10 --workdir=/tmp/mx
"""

from vit_flax.configs import vit_b16_finetune
from vit_flax.models import presets


def get_config(dataset: str = 'cifar10'):
  config = vit_b16_finetune.get_config(dataset)
  config.pp.crop = 224  # The pre-training resolution (see above).
  with config.unlocked():
    config.model_type = 'mixer'
    config.model = presets.get_model_config('Mixer-B_16')
  config.pretrained_path = 'gs://mixer_models/imagenet21k/Mixer-B_16.npz'
  return config
