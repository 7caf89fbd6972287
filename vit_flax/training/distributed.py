"""Multi-process start-up: `jax.distributed.initialize` when it is needed.

One process per host (TPU pods, multi-node GPU clusters) or per GPU (SLURM,
Open MPI): each must call `jax.distributed.initialize()` before touching a
device. A single process must not, so this decides from flags and the
environment.
"""

import os
from typing import Optional

from absl import logging
import jax


def multi_process_environment() -> Optional[str]:
  """Names the launcher that started several processes, if any."""
  env = os.environ
  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'SLURM'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  if ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    return 'Cloud TPU pod'
  return None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Initialises jax.distributed if flags or the environment ask for it.

  Explicit values (flags, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID) win; otherwise SLURM, Open MPI and Cloud TPU pods are
  detected and JAX finds the rest itself. Returns whether it initialised.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(
      'JAX_COORDINATOR_ADDRESS')
  if num_processes is None and 'JAX_NUM_PROCESSES' in env:
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and 'JAX_PROCESS_ID' in env:
    process_id = int(env['JAX_PROCESS_ID'])

  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          f'coordinator_address={coordinator_address} also needs '
          'num_processes and process_id (flags or JAX_NUM_PROCESSES / '
          'JAX_PROCESS_ID).')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    launcher = multi_process_environment()
    if launcher is None:
      return False
    logging.info('%s detected: initialising jax.distributed.', launcher)
    jax.distributed.initialize()
  logging.info('Process %d of %d; %d local and %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
