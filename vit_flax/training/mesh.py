"""The device mesh and how arrays are laid out on it.

The batch is sharded along the 'data' axis; params and optimizer state are
replicated. With `config.mesh_fsdp` > 1 the mesh gets a second axis,
'fsdp', the batch is sharded over both axes, and every large param and
optimizer-state tensor is split over 'fsdp' (fully sharded data
parallelism: XLA gathers the params for each step and reduce-scatters the
gradients). The param tree and checkpoints are the same either way.
"""

import collections
import itertools
from typing import Dict, Iterator

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_flax import errors

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
# Smaller tensors stay replicated under FSDP: gathering them would cost more
# (latency) than the memory it saves.
FSDP_MIN_SIZE = 2**12


def create_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A mesh over every device of every process.

  1-D along DATA_AXIS when `fsdp` is 1; otherwise (devices / fsdp, fsdp)
  along (DATA_AXIS, FSDP_AXIS). Consecutive devices (those of one process,
  on one host) share an FSDP group, so its gathers stay on the fast local
  links when `fsdp` <= the local device count.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if fsdp == 1:
    return Mesh(devices, (DATA_AXIS,))
  if fsdp < 1 or devices.size % fsdp:
    raise errors.ConfigError(
        f'mesh_fsdp={fsdp} must be >= 1 and divide the device count '
        f'({devices.size}).')
  return Mesh(devices.reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: the leading axis split over every device of the mesh."""
  axes = mesh.axis_names
  return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def state_sharding(tree, mesh: Mesh):
  """Shardings of a train state (or any tree of arrays) on `mesh`.

  Replicated without an FSDP axis. With one, each tensor of at least
  FSDP_MIN_SIZE elements is split along its largest dimension that the FSDP
  axis divides; the optimizer moments, shaped like their params, are split
  like them.
  """
  replicated = NamedSharding(mesh, P())
  if FSDP_AXIS not in mesh.axis_names:
    return jax.tree.map(lambda _: replicated, tree)
  fsdp = mesh.shape[FSDP_AXIS]

  def sharding(x):
    shape = np.shape(x)
    if np.prod(shape, dtype=np.int64) < FSDP_MIN_SIZE:
      return replicated
    divisible = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
    if not divisible:
      return replicated
    dim = max(divisible, key=lambda d: (shape[d], d))
    spec = [None] * len(shape)
    spec[dim] = FSDP_AXIS
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(sharding, tree)


def split_across_processes(tree) -> bool:
  """Whether no single process holds all of some array of `tree`."""
  return not all(x.is_fully_replicated or x.is_fully_addressable
                 for x in jax.tree.leaves(tree))


def fetch_params(params):
  """The params as numpy arrays on this host.

  Params split across processes (FSDP) are gathered first, which every
  process must take part in.
  """
  if split_across_processes(params):
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def to_global(batch: Dict[str, np.ndarray], sharding) -> Dict[str, jax.Array]:
  """This process's part of a batch -> one array sharded over all devices."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(batches: Iterator[Dict[str, np.ndarray]], size: int,
                     sharding) -> Iterator[Dict[str, jax.Array]]:
  """Keeps `size` batches in flight to the devices (transfers are async)."""
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(to_global(batch, sharding))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
