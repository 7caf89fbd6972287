"""Models: the Vision Transformer and its layers, ResNet, MLP-Mixer, staged ViT.

vit_jax's names are here, as in `vit_jax.models`: `from vit_flax import
models`, then `models.VisionTransformer(num_classes=n, **config)`.
"""

from vit_flax.models.mixer import MlpMixer as MlpMixer
from vit_flax.models.mlp import MlpBlock as MlpBlock
from vit_flax.models.posemb import AddPositionEmbs as AddPositionEmbs
from vit_flax.models.resnet import ResNet as ResNet
from vit_flax.models.staged import (
    StagedVisionTransformer as StagedVisionTransformer,
)
from vit_flax.models.vit import Encoder as Encoder
from vit_flax.models.vit import Encoder1DBlock as Encoder1DBlock
from vit_flax.models.vit import IdentityLayer as IdentityLayer
from vit_flax.models.vit import VisionTransformer as VisionTransformer
