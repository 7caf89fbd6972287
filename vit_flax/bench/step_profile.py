"""Where one train step's time goes, by kind of op, in JAX and in PyTorch.

JAX: a `jax.profiler` trace of the step, compiled with XLA's
`xla_cpu_enable_xprof_traceme` so that every thunk (a fusion, a matmul, a
copy) is an event on the worker threads; each event is named after its HLO
instruction, whose `op_name` metadata (the Flax module path and primitive)
and opcode give its kind. PyTorch: `torch.profiler`'s self time of every
aten op, by name, with the optimizer's ops (clipping and `step`) under one
`record_function` range.

Kinds: 'matmul' (dense layers, patch embedding, and their gradients),
'attention' (scores, softmax, weighted sum, not the q/k/v/out projections),
'layer_norm', 'gelu' (and the rest of the MLP between its matmuls),
'optimizer' (norm, clipping, momentum, update), 'copy' (copies and
transposes), 'loss' (head softmax, cross entropy) and 'other'.
"""

import collections
import glob
import os
import re
import tempfile
import time
from typing import Callable, Dict, Iterable, Tuple

KINDS = ('matmul', 'attention', 'layer_norm', 'gelu', 'optimizer', 'copy',
         'loss', 'other')

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%([\w.-]+) = .*? ([a-z][\w-]*)\((.*)$', re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# The q, k, v and out projections: dense layers (official names end in _1;
# flax's automatic ones, e.g. the official code's under today's flax, in _0;
# vit_flax computes q, k and v as one matmul, `query_key_value`).
_PROJECTION = re.compile(
    r'MultiHeadDotProductAttention(_\d+)?/'
    r'(query|key|value|out|query_key_value)/')
# Events of the XLA:CPU runtime that enclose thunks rather than run one.
_ENCLOSING_EVENTS = ('ThunkExecutor', 'ThreadpoolListener', 'end: ')


def entry_instructions(hlo_text: str) -> Dict[str, Tuple[str, str, str]]:
  """{name: (opcode, op_name, the rest of the line)} of the entry
  computation: the instructions that XLA:CPU runs as thunks."""
  start = hlo_text.index('\nENTRY')
  entry = hlo_text[start:hlo_text.index('\n}', start)]
  instructions = {}
  for match in _INSTRUCTION.finditer(entry):
    name, opcode, rest = match.groups()
    op_name = _OP_NAME.search(rest)
    instructions[name] = (opcode, op_name.group(1) if op_name else '', rest)
  return instructions


def hlo_kind(name: str, opcode: str, op_name: str, rest: str = '') -> str:
  """The kind of one entry instruction of a JAX train step."""
  if opcode in ('copy', 'transpose') or name.startswith(
      ('copy', 'transpose')):
    return 'copy'
  attention = 'MultiHeadDotProductAttention' in op_name and not (
      _PROJECTION.search(op_name))
  # Dots run alone or as library fusions (YNNPACK, XNNPACK, oneDNN).
  is_matmul = opcode in ('dot', 'convolution') or any(
      library in rest for library in ('__ynn_fusion', '__xnn_fusion',
                                      '__onednn'))
  if attention:
    return 'attention'
  if is_matmul:
    return 'matmul'
  if 'LayerNorm' in op_name or 'encoder_norm' in op_name:
    return 'layer_norm'
  if 'MlpBlock' in op_name:
    return 'gelu'
  if 'softmax' in op_name or 'one_hot' in op_name or 'head' in op_name:
    return 'loss'
  if 'VisionTransformer' in op_name or 'jvp(' in op_name:
    return 'other'
  if op_name.startswith('jit(') or op_name in ('reduce_sum', 'reduce_max'):
    return 'optimizer'  # Outside the model: clipping and the SGD update.
  return 'other'


def summarize_kinds(durations: Iterable[Tuple[str, float]],
                    kind_of: Callable[[str], str]) -> Dict[str, float]:
  """Seconds per kind of (op name, seconds) pairs."""
  totals = collections.OrderedDict((kind, 0.0) for kind in KINDS)
  for name, seconds in durations:
    totals[kind_of(name)] += seconds
  return dict(totals)


def as_step_ms(busy: Dict[str, float], step_seconds: float,
               threads: int) -> Dict[str, float]:
  """Thread seconds per kind -> ms of the step's wall time, each kind by
  its share of the busy time; 'idle' is what the threads did not fill."""
  total = sum(busy.values())
  capacity = step_seconds * threads
  busy_share = min(1.0, total / capacity) if capacity else 0.0
  figures = {kind: 1e3 * step_seconds * busy_share * seconds / total
             for kind, seconds in busy.items()} if total else {}
  figures['idle'] = 1e3 * step_seconds * (1.0 - busy_share)
  return figures


def jax_breakdown(run_step: Callable[[], None], hlo_text: str,
                  threads: int, trace_dir: str = None) -> Dict[str, float]:
  """ms per kind of op of one call of `run_step` (which must wait for the
  step), from a profiler trace; needs `xla_cpu_enable_xprof_traceme`."""
  import jax  # pylint: disable=g-import-not-at-top
  instructions = entry_instructions(hlo_text)
  trace_dir = trace_dir or tempfile.mkdtemp(prefix='step_profile_')
  with jax.profiler.trace(trace_dir):
    start = time.perf_counter()
    run_step()
    wall = time.perf_counter() - start
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                           recursive=True), key=os.path.getmtime)
  profile = jax.profiler.ProfileData.from_file(files[-1])
  durations = []
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith(('tf_XLAEigen', 'tf_XLAPjRtCpuClient')):
        continue
      for event in line.events:
        if event.name.startswith(_ENCLOSING_EVENTS):
          continue
        if event.name not in instructions:  # E.g. a nested computation's.
          continue
        durations.append((event.name, event.duration_ns * 1e-9))
  if not durations:
    raise RuntimeError(
        'The trace has no XLA thunk events; compile the step with '
        'xla_cpu_enable_xprof_traceme=true.')
  busy = summarize_kinds(
      durations, lambda name: hlo_kind(name, *instructions[name]))
  figures = as_step_ms(busy, wall, threads)
  figures['wall'] = 1e3 * wall
  return figures


def torch_kind(name: str, in_optimizer: bool) -> str:
  """The kind of one aten op of a PyTorch train step."""
  if in_optimizer:
    return 'optimizer'
  if any(s in name for s in ('scaled_dot_product', 'flash_attention',
                             'softmax_backward', '_softmax')) and (
                                 'log_softmax' not in name):
    return 'attention'
  if any(s in name for s in ('addmm', 'aten::mm', 'bmm', 'matmul',
                             'linear', 'convolution')):
    return 'matmul'
  if 'layer_norm' in name:
    return 'layer_norm'
  if 'gelu' in name:
    return 'gelu'
  if any(s in name for s in ('copy_', 'clone', 'contiguous', 'transpose',
                             'permute', '_to_copy', 'cat')):
    return 'copy'
  if any(s in name for s in ('log_softmax', 'nll_loss', 'cross_entropy')):
    return 'loss'
  return 'other'


OPTIMIZER_RANGE = 'peers.optimizer'


def torch_breakdown(step: Callable[[], None],
                    threads: int) -> Dict[str, float]:
  """ms per kind of op of one call of `step` (eager PyTorch, which marks
  its optimizer ops with `record_function(OPTIMIZER_RANGE)`), by the self
  time of each op on the calling thread."""
  import torch  # pylint: disable=g-import-not-at-top
  del threads  # Intra-op threads work inside the op that calls them.
  with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
    start = time.perf_counter()
    step()
    wall = time.perf_counter() - start
  durations = []
  for event in profiler.events():
    if event.name == OPTIMIZER_RANGE:
      continue
    parent, in_optimizer = event.cpu_parent, False
    while parent is not None and not in_optimizer:
      in_optimizer = parent.name == OPTIMIZER_RANGE
      parent = parent.cpu_parent
    durations.append(((event.name, in_optimizer),
                      event.self_cpu_time_total * 1e-6))
  busy = summarize_kinds(durations, lambda key: torch_kind(*key))
  figures = {kind: 1e3 * seconds for kind, seconds in busy.items()}
  figures['idle'] = max(0.0, 1e3 * wall - sum(figures.values()))
  figures['wall'] = 1e3 * wall
  return figures
