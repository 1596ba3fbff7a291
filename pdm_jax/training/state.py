"""TrainState: everything a resumed run needs (params, BN statistics, optimizer, EMA, step and RNG)."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """The pytree the train step maps to its successor; saved whole in every checkpoint."""
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any  # f_phi's BatchNorm running statistics (empty for the plain UNet)
  opt_state: optax.OptState
  ema_params: Any
  rng: jax.Array  # base key of the run; step s draws from fold_in(rng, s)


def init_variables(model, rng: jax.Array, image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Initialises every parameter (UNet, prototypes, f_phi) and BatchNorm statistics of `model`."""
  args, kwargs = model.kind.init_inputs(image_shape)
  return model.init({'params': rng, 'dropout': rng}, *args, **kwargs)


def create_train_state(model, tx: optax.GradientTransformation, init_rng: jax.Array, train_rng: jax.Array,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """A step-0 TrainState with EMA params equal to the initial params."""
  variables = init_variables(model, init_rng, image_shape)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params),
      rng=train_rng)


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
