"""Data-parallel device mesh: batches split over every device of every host, state replicated."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy rows -> one global jax.Array per key, sharded over the mesh's data axis."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local_batch.items()}


def check_batch_divides(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f'train.batch_size={global_batch_size} does not split over {mesh.size} devices: '
                     f'use a multiple of {mesh.size}.')
