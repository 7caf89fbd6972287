"""Fine-tunes the official ImageNet-21k Mixer-B/16, as vit_jax does.

The recipe of configs/vit_b16_finetune.py (SGD with momentum, base lr 0.03,
500 warm-up steps, cosine decay, clipping at 1.0, batch 512) at 224 px: the
Mixer's token-mixing MLPs are sized for the 14x14 patches of pre-training,
so it cannot be fine-tuned at another resolution. The argument picks the
data, from the same presets as the ViT:

python main.py --config=configs/mixer_b16_finetune.py:cifar10 --workdir=/tmp/mx
"""

from configs import common
from configs import vit_b16_finetune
from vit_flax import errors
from vit_flax import model_configs


def get_config(dataset: str = 'cifar10'):
  presets = vit_b16_finetune.DATASET_PRESETS
  if dataset not in presets:
    raise errors.ConfigError(
        f'Unknown fine-tuning dataset {dataset!r}; expected one of '
        f'{sorted(presets)}.')
  config = common.get_config()
  config.dataset = dataset
  train_split, test_split, total_steps = presets[dataset]
  config.pp.train = train_split
  config.pp.test = test_split
  config.pp.crop = 224  # The pre-training resolution (see above).
  config.pp.augment = 'inception_crop_flip'  # As the official fine-tuning.

  config.model_type = 'mixer'
  config.model = model_configs.get_model_config('Mixer-B_16')
  config.pretrained_path = 'gs://mixer_models/imagenet21k/Mixer-B_16.npz'

  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.optim_dtype = 'bfloat16'
  config.base_lr = 0.03
  config.decay_type = 'cosine'
  config.warmup_steps = 500
  config.grad_norm_clip = 1.0
  config.total_steps = total_steps
  config.batch = 512
  config.batch_eval = 512
  config.accum_steps = 8  # As the official config.
  config.eval_every = 1_000
  config.progress_every = 50
  config.checkpoint_every = 500
  return config.lock()
