"""Knowledge distillation from a frozen teacher (DeiT, arXiv 2012.12877).

The teacher is any model this project trains or loads: a run's workdir
(`config.distill.teacher`, its best or latest checkpoint and the config saved
with it) or an `.npz` with its config file or preset
(`config.distill.teacher_config`). Its forward pass runs inside the jitted
train step on the same (augmented, mixed) images as the student, and its
params are placed on the mesh like the student's.

The loss is DeiT's: (1 - alpha) * the usual loss of the class head plus
alpha * the distillation loss of the distillation head
(`classifier='token_distill'`), or of the same head for other students.
'hard': cross entropy against the teacher's argmax (DeiT's default); 'soft':
temperature^2 * KL(softmax(teacher / T) || softmax(student / T)).
"""

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from vit_flax import errors
from vit_flax.commands import cli
from vit_flax.commands import inference
from vit_flax.models import presets

TYPES = ('hard', 'soft')
CHECKPOINTS = inference.CHECKPOINT_KINDS


@dataclasses.dataclass(frozen=True)
class DistillOptions:
  """How the student learns from the teacher (see module doc)."""
  type: str = 'hard'
  alpha: float = 0.5
  temperature: float = 1.0


def options_from_config(config) -> Optional[DistillOptions]:
  """DistillOptions of `config.distill`, None without a teacher; checks them
  and that a `token_distill` student has a teacher."""
  distill = config.get('distill') or {}
  classifier = (config.get('model') or {}).get('classifier')
  if not distill.get('teacher'):
    if classifier == 'token_distill':
      raise errors.ConfigError(
          "config.model.classifier='token_distill' has a distillation head "
          'that learns from a teacher, but config.distill.teacher is not set; '
          'give a teacher (a run\'s workdir, or an .npz with '
          "config.distill.teacher_config) or use classifier='token'.")
    return None
  options = DistillOptions(type=distill.get('type', 'hard'),
                           alpha=distill.get('alpha', 0.5),
                           temperature=distill.get('temperature', 1.0))
  if options.type not in TYPES:
    raise errors.ConfigError(
        f'config.distill.type={options.type!r} is not a distillation type; '
        f"expected one of {TYPES} ('hard': the teacher's argmax, DeiT's "
        "default; 'soft': KL divergence at config.distill.temperature).")
  if not 0 <= options.alpha <= 1:
    raise errors.ConfigError(
        f'config.distill.alpha={options.alpha!r} must be in [0, 1]: the '
        'weight of the distillation loss (DeiT: 0.5).')
  if not options.temperature > 0:
    raise errors.ConfigError(
        f'config.distill.temperature={options.temperature!r} must be > 0 '
        '(DeiT: 1 for hard, 3 for soft distillation).')
  checkpoint_kind = distill.get('teacher_checkpoint', 'best')
  if checkpoint_kind not in CHECKPOINTS:
    raise errors.ConfigError(
        f'config.distill.teacher_checkpoint={checkpoint_kind!r}; expected one '
        f'of {CHECKPOINTS} (of the teacher run\'s workdir).')
  return options


@dataclasses.dataclass
class Teacher:
  """A frozen model and its params (numpy, on the host until placed)."""
  model: Any
  params: Any
  source: str


def load_teacher(config, num_classes: int, image_size: int) -> Teacher:
  """The teacher of `config.distill`, checked against the student's task.

  Raises:
    UserError: a missing teacher, or one of another class count or input
      size, before any training work.
  """
  distill = config.distill
  teacher = distill.teacher
  teacher_config = distill.get('teacher_config')
  if os.path.isdir(teacher):
    if teacher_config:
      raise errors.ConfigError(
          f'config.distill.teacher={teacher!r} is a run directory, which '
          'carries its own config; config.distill.teacher_config is for an '
          '.npz teacher.')
    loaded = inference.load_inference_model(
        workdir=teacher, which=distill.get('teacher_checkpoint', 'best'))
  elif os.path.isfile(teacher):
    if not teacher_config:
      raise errors.ConfigError(
          f'config.distill.teacher={teacher!r} is a file, which holds no '
          'model config: set config.distill.teacher_config to its config '
          'file (path[:argument]) or to a preset name (e.g. ViT-Ti_16).')
    if teacher_config in presets.MODEL_CONFIGS:
      loaded = inference.load_inference_model(which=teacher,
                                              model_name=teacher_config)
    else:
      loaded = inference.load_inference_model(
          which=teacher, config=cli.load_config_file(teacher_config))
  else:
    raise errors.ConfigError(
        f'config.distill.teacher={teacher!r} does not exist; give the workdir '
        'of a finished training run (e.g. of configs/resnet8_quickstart.py) '
        'or an .npz file.')
  source = f'teacher {teacher}'
  if loaded.num_classes != num_classes:
    raise errors.ConfigError(
        f'The {source} has {loaded.num_classes} classes but the data set '
        f'({config.dataset}) has {num_classes}: a teacher must be trained on '
        'the same classes as the student.')
  teacher_size = (loaded.config.get('pp') or {}).get('crop')
  if teacher_size is not None and teacher_size != image_size:
    raise errors.ConfigError(
        f'The {source} was trained on {teacher_size}px images but the '
        f'student trains on {image_size}px (config.pp.crop): the teacher sees '
        'the student\'s images, so train the teacher at that size.')
  # The teacher must take the student's input (patch sizes, strides).
  presets.abstract_params(loaded.model, image_size)
  return Teacher(model=loaded.model, params=loaded.params, source=source)


def distillation_loss(student_logits, teacher_logits, options: DistillOptions):
  """Per-example loss of the distillation head against the teacher."""
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  num_classes = student_logits.shape[-1]
  if options.type == 'hard':
    targets = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), num_classes)
    return optax.softmax_cross_entropy(student_logits, targets)
  t = options.temperature
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / t)
  student_log_probs = jax.nn.log_softmax(student_logits / t)
  kl = jnp.sum(jnp.exp(teacher_log_probs) *
               (teacher_log_probs - student_log_probs), axis=-1)
  return kl * t * t
