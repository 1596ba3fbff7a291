"""One pure optimisation step: diffusion loss + prototype loss, AdamW update, EMA, and its metrics."""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pdm_jax import diffusion
from pdm_jax.training import sharding
from pdm_jax.training.state import TrainState


def prototype_usage(selected: jax.Array, num_prototypes: int) -> dict[str, jax.Array]:
  """How many of the K prototypes a batch selects, and the entropy (nats) of their use."""
  counts = jnp.bincount(selected, length=num_prototypes)
  probs = counts / jnp.maximum(counts.sum(), 1)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return dict(prototypes_used=jnp.sum(counts > 0).astype(jnp.float32), prototype_entropy=entropy)


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
  """EMA decay warmed up as (1 + step) / (10 + step), so early averages are not dominated by the init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, tx: optax.GradientTransformation,
               schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
               learning_rate_fn: Callable[[jax.Array], jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """(state, global batch {'image': (B,H,W,C), ['label': (B,)]}) -> (next state, scalar metrics)."""
  images = batch['image']
  labels = batch.get('label')
  num_images = images.shape[0]
  # Every draw of step s comes from fold_in(run key, s): the same numbers whatever the device count.
  step_rng = jax.random.fold_in(state.rng, state.step)
  t_rng, noise_rng, dropout_rng = jax.random.split(step_rng, 3)
  t = jax.random.randint(t_rng, (num_images,), 0, schedule.num_timesteps)
  noise = jax.random.normal(noise_rng, images.shape, images.dtype)
  x_t = diffusion.q_sample(schedule, images, t, noise)
  target = diffusion.training_target(schedule, images, noise, t, config.diffusion.prediction_type)
  weights = diffusion.loss_weights(schedule, t, config.diffusion.loss_weighting,
                                   config.diffusion.prediction_type, config.diffusion.snr_gamma)

  def loss_fn(params):
    variables = {'params': params}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    (output, aux), mutated = model.apply(
        variables, x_t, t, clean_images=images, labels=labels, train=True,
        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    per_image = jnp.mean((output - target)**2, axis=tuple(range(1, output.ndim)))
    diffusion_loss = jnp.mean(weights * per_image)
    loss = diffusion_loss + aux.get('prototype_loss', 0.0)
    return loss, (diffusion_loss, aux, mutated.get('batch_stats', {}))

  (loss, (diffusion_loss, aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, config.train.ema_decay)
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)

  metrics = dict(loss=loss, diffusion_loss=diffusion_loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(params), learning_rate=learning_rate_fn(state.step))
  for name in ('prototype_loss', 'contrastive_loss', 'align_loss', 'compact_loss'):
    if name in aux:
      metrics[name] = aux[name]
  if 'selected_prototype' in aux:
    metrics.update(prototype_usage(aux['selected_prototype'], model.num_prototypes))
    if config.model.type == 'spdm':
      # How often f_phi's nearest prototype is the labelled one: is the memory learning the classes?
      metrics['prototype_accuracy'] = jnp.mean((aux['nearest_prototype'] == labels).astype(jnp.float32))
  next_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats or state.batch_stats,
                             opt_state=opt_state, ema_params=ema_params)
  return next_state, metrics


def make_train_step(model, tx, schedule, config, learning_rate_fn, mesh) -> Callable[..., Any]:
  """The jit-compiled step: state replicated and donated, batch split over the mesh's data axis."""
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                           learning_rate_fn=learning_rate_fn)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)), donate_argnums=(0,))
