"""Fine-tunes DeiT-tiny (timm or Hugging Face weights) with the ViT recipe.

configs/vit_b16_finetune.py's recipe (SGD momentum 0.9, lr 0.03, warm-up +
cosine, clipping, batch 512 at 384 px) on DeiT-tiny, the ViT-Ti/16 shape
with exact GELU (PyTorch's nn.GELU). The argument picks the data:

python main.py --config=configs/deit_tiny_finetune.py:cifar10 \\
    --workdir=/tmp/deit_tiny --config.pretrained_path=deit-tiny-patch16-224

`pretrained_path` is the folder of `facebook/deit-tiny-patch16-224` (or its
`model.safetensors`, with `config.json` beside it), or the
`model.safetensors` of timm's `deit_tiny_patch16_224.fb_in1k`.
"""

from vit_flax.configs import vit_b16_finetune
from vit_flax.models import presets


def get_config(dataset: str = 'cifar10'):
  config = vit_b16_finetune.get_config(dataset)
  with config.unlocked():
    config.model = presets.get_model_config('ViT-Ti_16')
    config.model.gelu = 'exact'  # DeiT was trained with the erf GELU.
    # The folder `hf download facebook/deit-tiny-patch16-224
    # --local-dir deit-tiny-patch16-224` writes.
    config.pretrained_path = 'deit-tiny-patch16-224'
    config.accum_steps = 1  # 512 images of a 5.7M-param model fit at once.
  return config.lock()
