"""Any model preset at 224 px on the offline Fashion-MNIST, for benchmarks.

python -m vit_flax.bench.benchmark --config=benchmarks/preset.py:ViT-B_16 \
    --config.batch=32 --config.batch_eval=32

The train step is timed on synthetic batches; the input pipeline and the
training loop read Fashion-MNIST (28 px, scaled to 224 px and augmented as
ImageNet is), which needs no download.
"""

from ml_collections.config_dict import placeholder

from vit_flax.configs import common
from vit_flax.models import presets


def get_config(model: str = 'ViT-B_16'):
  config = common.get_config()
  config.dataset = 'fashion_mnist'  # Offline from Debian's IDX files.
  config.pp.crop = 224
  config.pp.augment = 'inception_crop_flip'  # As for ImageNet.

  config.model = presets.get_model_config(model)
  config.model_type = presets.PRESET_MODEL_TYPES[model]
  if 'attention_impl' in config.model:
    # A copied preset holds None, which --config.model.attention_impl=cudnn
    # could not override.
    config.model.attention_impl = placeholder(str)

  # The paper's pre-training optimizer.
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.weight_decay = 0.1
  config.batch = 32  # Small for CPUs; accelerators want e.g. 256 per chip.
  config.batch_eval = 32
  config.warmup_steps = 10
  return config.lock()
