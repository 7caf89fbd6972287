"""Fine-tunes the official ImageNet-21k ViT-B/16 with the paper's recipe.

SGD with momentum 0.9, base lr 0.03, 500 warm-up steps, cosine decay,
gradient clipping at 1.0, batch 512 at 384 px. The argument picks the data:

python main.py --config=configs/vit_b16_finetune.py:cifar100 --workdir=/tmp/ft
"""

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.models import presets

# Dataset -> (train split, test split, steps). Held-out slices as in vit_jax.
DATASET_PRESETS = {
    'cifar10': ('train[:98%]', 'test', 10_000),
    'cifar100': ('train[:98%]', 'test', 10_000),
    'oxford_iiit_pet': ('train[:90%]', 'test', 500),
    'oxford_flowers102': ('train+validation', 'test', 500),
    'imagenet2012': ('train[:99%]', 'validation', 20_000),
}


def get_config(dataset: str = 'cifar10'):
  if dataset not in DATASET_PRESETS:
    raise errors.ConfigError(
        f'Unknown fine-tuning dataset {dataset!r}; expected one of '
        f'{sorted(DATASET_PRESETS)}.')
  config = common.get_config()
  config.dataset = dataset
  train_split, test_split, total_steps = DATASET_PRESETS[dataset]
  config.pp.train = train_split
  config.pp.test = test_split
  config.pp.crop = 384
  config.pp.augment = 'inception_crop_flip'  # As the official fine-tuning.

  config.model = presets.get_model_config('ViT-B_16')
  config.pretrained_path = 'gs://vit_models/imagenet21k/ViT-B_16.npz'

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
  config.accum_steps = 8  # 64 images per chunk fit a 16 GB accelerator.
  config.eval_every = 1_000
  config.progress_every = 50
  config.checkpoint_every = 500
  return config.lock()
