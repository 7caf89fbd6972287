"""Resolution curricula: (start, size) phases turned into step ranges."""

import dataclasses
from typing import List, Sequence

from vit_flax.data import sources

# Resolution curriculum.


@dataclasses.dataclass(frozen=True)
class Phase:
  start_step: int
  end_step: int
  image_size: int


def curriculum_phases(curriculum: Sequence[Sequence[int]], unit: str,
                      total_steps: int, final_size: int,
                      steps_per_epoch: float) -> List[Phase]:
  """Turns [(start, size), ...] in steps or epochs into step ranges."""
  if not curriculum:
    return [Phase(0, total_steps, final_size)]
  if unit not in ('steps', 'epochs'):
    raise sources.DataError(
        f'Unknown curriculum unit {unit!r}; expected steps or '
        'epochs.')
  scale = steps_per_epoch if unit == 'epochs' else 1
  starts = [int(round(start * scale)) for start, _ in curriculum]
  sizes = [int(size) for _, size in curriculum]
  if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
    raise sources.DataError(
        f'Curriculum {list(curriculum)} must start at 0 and '
        'increase strictly.')
  ends = starts[1:] + [total_steps]
  return [Phase(s, e, z) for s, e, z in zip(starts, ends, sizes) if s < e]
