"""The skeleton every study follows, from its command line to its report.

A study compares `Variant`s (models or settings, each a training config)
at one or more `budget.Budget`s (the same steps, the same wall clock).
A `Study` names its module, its options (a `cli.StudyOptions`
subclass, whose fields are its flags) and three functions: its variants,
its budgets and its report. `Study.run` then does what every study does,
in this order: describes the machine; measures each model once (parameters,
FLOPs) and each variant's training set; for every budget and variant, fits
the config to the budget (calibrating it on this machine for a wall-clock
budget) and trains it in its own workdir; collects the table rows and the
runs (`StudyResults`); and has the study write its report from them.
`Study.run_as_command` is a study's `if __name__ == '__main__'` block.
"""

import dataclasses
import datetime
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments import budget as budget_lib
from experiments import cli
from experiments import report
from experiments import runs
from vit_flax import errors
from vit_flax.models import stats
from vit_flax.training import host

# `Study.run_as_command` defines the flags of the calling study (--help).
flags.disclaim_key_flags()

MEASURES = ('params', 'flops')  # What `Study.measures` may name.


@dataclasses.dataclass
class Variant:
  """One of the things a study compares, with its config before a budget.

  `key` names its workdirs under --workdir (`<budget kind>_<key>` and
  `calibrate_<key>`); `label` names its runs in logs, legends and notes;
  `cells` are its own cells of the table (its name, its settings);
  `train_eval_split`, when given, is evaluated after training as the test
  set is (train accuracy and loss, and their gaps to the test set's);
  `keep_checkpoint` keeps the run's final checkpoint (e.g. for a teacher
  that a later variant distils from); `for_budget(config, budget,
  workdir)`, when given, adapts the config to the budget before it is
  fitted (e.g. names the teacher trained at the same budget).
  """

  key: str
  label: str
  config: ml_collections.ConfigDict
  cells: Dict[str, Any] = dataclasses.field(default_factory=dict)
  train_eval_split: Optional[str] = None
  keep_checkpoint: bool = False
  for_budget: Optional[Callable[..., ml_collections.ConfigDict]] = None


@dataclasses.dataclass
class RunResult:
  """One (variant, budget) run: its calibration, its run and its table row.

  The row holds the variant's cells, `label`, `budget` (the budget's
  label), its model's measures, `train_examples`, what
  `runs.train_and_measure` measured and, at a wall-clock budget,
  `budget_seconds`, `step_seconds` and `size_step_seconds` (the
  calibration's step times).
  """

  variant: Variant
  budget: budget_lib.Budget
  timing: Optional[budget_lib.Timing]  # The calibration's, if in seconds.
  run: runs.Run
  row: Dict[str, Any]


@dataclasses.dataclass
class StudyResults:
  """Everything a study's report is written from."""

  command: str  # The command line that ran the study.
  started: datetime.datetime
  machine: Dict[str, str]
  budgets: List[budget_lib.Budget]
  results: List[RunResult]  # By budget, then by variant.

  @property
  def rows(self) -> List[Dict[str, Any]]:
    return [result.row for result in self.results]

  def runs_at(self, budget: Optional[budget_lib.Budget] = None
              ) -> Dict[str, runs.Run]:
    """Variant label -> its run at `budget` (by default the only one)."""
    if budget is None:
      if len(self.budgets) != 1:
        raise ValueError(f'{len(self.budgets)} budgets: name one.')
      budget = self.budgets[0]
    return {result.variant.label: result.run for result in self.results
            if result.budget == budget}

  def header(self, title: str) -> List[str]:
    """The report's opening lines: `title`, the command, the machine."""
    return report.report_header(title, self.command, self.started,
                                self.machine)


def measure_variants(variants: Sequence[Variant], kinds: Sequence[str]
                     ) -> Dict[str, Dict[str, Any]]:
  """Variant key -> its model's measures of `kinds`, and `train_examples`.

  Each model (type, config, image size, classes) is measured once, however
  many variants train it.
  """
  unknown = sorted(set(kinds) - set(MEASURES))
  if unknown:
    raise ValueError(f'Unknown measures {unknown}; expected some of '
                     f'{MEASURES}.')
  by_model = {}
  measures = {}
  for variant in variants:
    config = variant.config
    num_classes = runs.num_classes_of(config)
    model = json.dumps([config.get('model_type', 'vit'),
                        config.model.to_dict(), config.pp.crop, num_classes],
                       sort_keys=True, default=str)
    if model not in by_model:
      by_model[model] = {}
      if 'params' in kinds:
        by_model[model]['params'] = stats.config_params(config, num_classes)
      if 'flops' in kinds:
        by_model[model]['flops'] = stats.config_flops(config, num_classes)
    measures[variant.key] = dict(
        by_model[model], train_examples=runs.num_train_examples(config))
  return measures


def train_variant(variant: Variant, budget: budget_lib.Budget,
                  measures: Dict[str, Any], workdir: str,
                  num_evals: int) -> RunResult:
  """Fits `variant` to `budget`, trains it under `workdir` and measures it.

  `measures` are the variant's, from `measure_variants`.
  """
  config = variant.config
  if variant.for_budget is not None:
    config = variant.for_budget(config, budget, workdir)
  config, timing = budget.fit(
      variant.label, config,
      os.path.join(workdir, f'calibrate_{variant.key}'), num_evals)
  if variant.keep_checkpoint:  # One save, at the end.
    config.checkpoint_every = config.total_steps
    config.keep_checkpoints = 1
  measured, run = runs.train_and_measure(
      f'{variant.label} ({budget.label})', config,
      os.path.join(workdir, f'{budget.kind}_{variant.key}'),
      measures['train_examples'], variant.train_eval_split)
  row = dict(variant.cells, label=variant.label, budget=budget.label,
             **measures, **measured)
  if timing:
    row.update(budget_seconds=budget.amount, step_seconds=timing.step_seconds,
               size_step_seconds=timing.size_step_seconds)
  return RunResult(variant, budget, timing, run, row)


@dataclasses.dataclass(frozen=True)
class Study:
  """A study: its command, options, variants, budgets and report.

  `variants(options)` and `budgets(options)` say what to train;
  `write_report(options, results)` writes the report of `StudyResults`;
  `measures` are what each model's row holds of `MEASURES`.
  """

  module: str  # Its command is `python -m <module>`.
  options_type: type  # A frozen `cli.StudyOptions` dataclass.
  variants: Callable[[Any], Sequence[Variant]]
  budgets: Callable[[Any], Sequence[budget_lib.Budget]]
  write_report: Callable[[Any, StudyResults], Any]
  measures: Tuple[str, ...] = MEASURES

  def run(self, options) -> StudyResults:
    """Trains every variant at every budget, then writes the report."""
    started = datetime.datetime.now()
    machine = host.describe_machine()
    variants = list(self.variants(options))
    budgets = list(self.budgets(options))
    keys = [variant.key for variant in variants]
    if len(set(keys)) != len(keys):
      raise ValueError('Variant keys must differ (they name workdirs): '
                       f'{keys}.')
    measures = measure_variants(variants, self.measures)
    results = [train_variant(variant, budget, measures[variant.key],
                             options.workdir, options.num_evals)
               for budget in budgets for variant in variants]
    study_results = StudyResults(
        cli.options_command(self.module, options), started, machine,
        budgets, results)
    self.write_report(options, study_results)
    return study_results

  def main(self, argv: Sequence[str]):
    """The body of the study's `main`: bad input becomes a message."""
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    host.hide_gpus_from_tensorflow()
    try:
      self.run(cli.options_from_flags(self.options_type))
    except errors.UserError as e:
      logging.error('%s', e)
      sys.exit(f'Error: {e}')

  def run_as_command(self):
    """`python -m <module>`: defines the study's flags, then runs `main`.

    Only a study run as a command defines its flags, so that tests can
    import several studies at once (absl refuses a flag defined twice).
    """
    cli.define_flags(self.options_type)
    app.run(self.main)
