"""Writing a study's report: a markdown page of tables and a PNG of curves.

A report opens with `report_header` (the title, the command that wrote it
and the machine), holds its results as a `markdown_table` of rows under
`Column`s (those every study shares are defined here, so that a figure
reads the same in every report) with notes on how they were measured
(`cost_notes`, `off_budget_notes`), and ends with its figure: `Panel`s of
curves drawn by `plot_panels`. `write_report` writes both files.
"""

import dataclasses
import datetime
import math
import os
from typing import Any, Callable, List, Mapping, Sequence, Tuple

from absl import logging
from matplotlib.backends import backend_agg
import matplotlib.figure
import numpy as np

from experiments import budget as budget_lib
from experiments import runs


@dataclasses.dataclass(frozen=True)
class Column:
  """A table column: the row key, its header and how to format a value."""

  key: str
  header: str
  fmt: Callable[[Any], str] = str


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[Column]) -> str:
  """A GitHub markdown table; a row lacking a key shows an empty cell."""
  lines = ['| ' + ' | '.join(c.header for c in columns) + ' |',
           '|' + '|'.join('---' for _ in columns) + '|']
  for row in rows:
    cells = [c.fmt(row[c.key]) if row.get(c.key) is not None else ''
             for c in columns]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def format_count(n: float) -> str:
  """1234567 -> '1.23M', 353674 -> '354k'."""
  if n >= 1e6:
    return f'{n / 1e6:.2f}M'
  if n >= 1e3:
    return f'{n / 1e3:.0f}k'
  return f'{n:.0f}'


def format_percent(x: float) -> str:
  """0.91234 -> '91.23%'."""
  return f'{100 * x:.2f}%'


def format_points(x: float) -> str:
  """A difference of two fractions in percentage points: 0.0123 -> '+1.23'."""
  return f'{100 * x:+.2f}'


# Columns every study reports, under the same headers and formats; the keys
# are those of `runs.train_and_measure`'s rows and the study's measures.
PARAMS = Column('params', 'Params', format_count)
FLOPS = Column('flops', 'MFLOPs / image', lambda x: f'{x / 1e6:.1f}')
IMG_PER_SEC = Column('img_per_sec', 'Train img/s', lambda x: f'{x:.0f}')
STEPS = Column('steps', 'Steps', str)
EPOCHS = Column('epochs', 'Epochs', lambda x: f'{x:.1f}')
WALL = Column('wall', 'Wall time (s)', lambda x: f'{x:.0f}')
TEST_ACCURACY = Column('test_accuracy', 'Test acc.', format_percent)
TRAIN_ACCURACY = Column('train_accuracy', 'Train acc.', format_percent)
ACCURACY_GAP = Column('accuracy_gap', 'Gap (train - test acc., points)',
                      format_points)
TEST_LOSS = Column('test_loss', 'Test loss', lambda x: f'{x:.4f}')
TRAIN_LOSS = Column('train_loss', 'Train loss', lambda x: f'{x:.4f}')
LOSS_GAP = Column('loss_gap', 'Gap (test - train loss)', lambda x: f'{x:+.4f}')
# What a run at a step or wall-clock budget reached and what it cost.
RUN_COLUMNS = (STEPS, EPOCHS, IMG_PER_SEC, WALL, TEST_ACCURACY,
               TRAIN_ACCURACY, ACCURACY_GAP)


@dataclasses.dataclass
class Panel:
  """One plot: a title, axis labels and labelled (x, y) lines."""

  title: str
  xlabel: str
  ylabel: str
  lines: List[Tuple[str, np.ndarray, np.ndarray]]
  vlines: Sequence[Tuple[str, float]] = ()  # Labelled dashed x markers.


def plot_panels(panels: Sequence[Panel], path: str, ncols: int = 3,
                panel_size: Tuple[float, float] = (4.2, 3.2)):
  """Writes `panels` as a grid of line plots to the PNG at `path`."""
  nrows = max(1, math.ceil(len(panels) / ncols))
  ncols = min(ncols, len(panels))
  figure = matplotlib.figure.Figure(
      figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
      layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  for i, panel in enumerate(panels):
    axes = figure.add_subplot(nrows, ncols, i + 1)
    for label, xs, ys in panel.lines:
      axes.plot(xs, ys, marker='.' if len(xs) < 20 else None, label=label)
    for label, x in panel.vlines:
      axes.axvline(x, color='gray', linestyle='--', linewidth=1, label=label)
    axes.set_title(panel.title, fontsize=10)
    axes.set_xlabel(panel.xlabel)
    axes.set_ylabel(panel.ylabel)
    axes.grid(alpha=0.3)
    if panel.lines or panel.vlines:
      axes.legend(fontsize=8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=110)


# Curves a budget's runs are compared by: (tag, title, y label).
TEST_ACCURACY_CURVE = ('eval_accuracy', 'test accuracy', 'test accuracy')
TEST_LOSS_CURVE = ('eval_loss', 'test loss', 'test loss')
TRAIN_LOSS_CURVE = ('loss', 'training loss', 'training objective (batch mean)')
X_LABELS = {'step': 'step', 'seconds': 'wall-clock seconds since the start'}


def budget_panels(budget: budget_lib.Budget,
                  runs_by_name: Mapping[str, runs.Run],
                  curves: Sequence[Tuple[str, str, str]] = (
                      TEST_ACCURACY_CURVE, TRAIN_LOSS_CURVE)) -> List[Panel]:
  """A panel per curve of the runs of `budget`, on the axis they share.

  Runs of the same steps are drawn against steps, those of the same wall
  clock against seconds, with the budget marked.
  """
  vlines = (('budget', budget.amount),) if budget.x == 'seconds' else ()
  return [Panel(f'{budget.label}: {title}', X_LABELS[budget.x], ylabel,
                [(name, *run.curve(tag, budget.x))
                 for name, run in runs_by_name.items()], vlines)
          for tag, title, ylabel in curves]


def report_header(title: str, command: str, started: datetime.datetime,
                  machine: Mapping[str, str]) -> List[str]:
  """Markdown lines: the title, the command and the machine table."""
  return [
      f'# {title}',
      '',
      f'Written by `{command}`, started {started:%Y-%m-%d %H:%M}; every '
      'number below comes from the runs it made.',
      '',
      '| Machine | |', '|---|---|',
  ] + [f'| {k} | {v} |' for k, v in machine.items()]


def off_budget_notes(rows: Sequence[Mapping[str, Any]]) -> List[str]:
  """A warning per wall-clock run that missed its budget by over 10%.

  Rows of wall-clock runs hold `budget_seconds`; `label` names the run.
  Either way the run's steps came from its calibration's step time, which
  varied by about 20% between runs on an idle 2-core VM
  (docs/experiments.md); other load on the machine is the other cause.
  """
  notes = []
  for row in rows:
    budget = row.get('budget_seconds')
    if not budget or abs(row['wall'] - budget) <= 0.1 * budget:
      continue
    slower = row['wall'] > budget
    notes.append(
        f'- **{row["label"]} took {row["wall"]:.0f} s of its {budget:.0f} s '
        f'budget**: it ran {"slower" if slower else "faster"} than its '
        'calibration predicted (step times vary by up to about 20% between '
        'runs on a 2-core VM, more under other load), so it had '
        f'{"more" if slower else "less"} time than the others.')
  return notes


def cost_notes(image_size: int) -> List[str]:
  """How a report's FLOPs, img/s and wall-time columns were measured."""
  return [
      "- FLOPs: XLA's cost analysis of the jitted forward pass of one "
      f'{image_size}px image (a multiply-add counts 2).',
      '- Train img/s: median over the logging windows after the first '
      '(which holds the compilation); wall time includes data loading, '
      'compilation and the evaluations.',
  ]


def write_report(out: str, lines: Sequence[str], panels: Sequence[Panel],
                 ncols: int = 3):
  """Writes OUT.png (the `panels`) and OUT.md (`lines`, then that figure)."""
  out_md, out_png = out + '.md', out + '.png'
  plot_panels(panels, out_png, ncols)
  with open(out_md, 'w') as f:  # plot_panels made the folder.
    f.write('\n'.join([*lines, '', f'![Curves]({os.path.basename(out_png)})',
                       '']))
  logging.info('Wrote %s and %s.', out_md, out_png)
