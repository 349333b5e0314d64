"""Device meshes and where arrays live on them.

The mesh has two axes: `data` (the batch is split along it) and `model`
(the paper's two-tower split). With model=1 everything below is plain data
parallelism: parameters replicated, batch sharded on `data`.
"""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


class MeshError(ValueError):
  """A mesh that does not fit the devices of this run (a user error)."""


def create_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A (data, model) mesh; -1 on one axis takes the remaining devices."""
  n = jax.device_count()
  data, model = mesh_config.data, mesh_config.model
  if model != 1:
    raise MeshError("mesh.model > 1 (the two-device tower split) is not "
                    "implemented yet; use mesh.model=1")
  if data == -1:
    data = n // model
  if data < 1 or data * model != n:
    raise MeshError(f"mesh {data}x{model} (data x model) needs "
                    f"{data * model} devices, this run has {n}")
  return jax.make_mesh((data, model), ("data", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches: split along `data`, each row on one data shard."""
  return NamedSharding(mesh, P("data"))


def state_shardings(state, mesh: jax.sharding.Mesh):
  """A sharding for every leaf of a model or optimizer state."""
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
