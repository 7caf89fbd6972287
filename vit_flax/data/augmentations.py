"""Which training augmentations a config asks for, without TensorFlow.

`pp.augment` names a per-example geometric augmentation ('auto' picks one
fitting the data); `pp.randaugment`, `pp.trivial_augment` and
`pp.random_erase` add to it. The host pipeline (`data/pipeline.py`) has them
all; the devices (`config.data_on_device`, `data/device_augment.py`) have
those in DEVICE_AUGMENTATIONS and random erasing, not RandAugment or
TrivialAugment.
"""

from typing import List, Optional, Tuple

from vit_flax.data import sources

AUGMENTATIONS = ('auto', 'inception_crop_flip', 'pad_crop_flip', 'pad_crop',
                 'flip', 'none')
# The values of pp.augment that the devices can do in the train step.
DEVICE_AUGMENTATIONS = ('inception_crop_flip', 'pad_crop_flip', 'pad_crop',
                        'flip', 'none')
# Digits and glyphs: flips and crops change what they show.
_NO_AUGMENT_DATASETS = ('mnist', 'emnist', 'kmnist', 'binarized_mnist')


def resolve_augment(augment: str, dataset: str,
                    image_shape: Optional[Tuple[int, int, int]]) -> str:
  """Picks the augmentation fitting the data when `augment` is 'auto'."""
  if augment not in AUGMENTATIONS:
    raise sources.DataError(
        f'Unknown augmentation {augment!r}; expected one of '
        f'{AUGMENTATIONS}.')
  if augment != 'auto':
    return augment
  if dataset.split('/')[0] in _NO_AUGMENT_DATASETS:
    return 'none'
  if image_shape is not None and max(image_shape[:2]) <= 64:
    return 'pad_crop_flip'  # CIFAR-like small images.
  return 'inception_crop_flip'  # ImageNet-like photos.


def host_only(pp, augment: Optional[str] = None) -> List[str]:
  """The settings of `pp` that only the host pipeline can do, as
  'pp.field=value' (empty when the devices can do them all).

  Args:
    pp: the config's `pp`.
    augment: `pp.augment` resolved (`resolve_augment`); by default
      `pp.augment` as it is ('auto' counts as possible: it is resolved
      with the data).
  """
  augment = pp.get('augment', 'auto') if augment is None else augment
  fields = []
  if augment in AUGMENTATIONS and augment not in DEVICE_AUGMENTATIONS + (
      'auto',):
    fields.append(f'pp.augment={augment!r}')
  if tuple(pp.get('randaugment', ()) or ()):
    fields.append(f'pp.randaugment={tuple(pp.randaugment)}')
  if pp.get('trivial_augment', False):
    fields.append('pp.trivial_augment=True')
  return fields
