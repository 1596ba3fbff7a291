"""One pure optimisation step: diffusion loss + prototype loss, AdamW update, EMA, and its metrics."""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pdm_jax import diffusion
from pdm_jax import xla_options
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


def check_grad_accum_steps(global_batch_size: int, grad_accum_steps: Any, num_devices: int = 1) -> None:
  """grad_accum_steps must be an int >= 1 dividing the global batch into micro-batches that split over the devices."""
  n = grad_accum_steps
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'train.grad_accum_steps={n!r} must be an integer >= 1 (1: no accumulation).')
  if global_batch_size % n or (global_batch_size // n) % num_devices:
    valid = [k for k in range(1, global_batch_size + 1)
             if global_batch_size % k == 0 and (global_batch_size // k) % num_devices == 0]
    raise ValueError(f'train.grad_accum_steps={n} does not split train.batch_size={global_batch_size} into equal '
                     f'micro-batches that split over {num_devices} device(s): use one of {valid}.')


def _split_micro_batches(tree: Any, num_micro: int) -> Any:
  """(B, ...) leaves -> (n, B/n, ...): micro-batch i holds rows i, i+n, i+2n, ...

  A contiguous block of rows (one device's shard) stays contiguous along the B/n axis, so when B is split over D
  devices every micro-batch is still split over all D devices and no row changes device.
  """
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, tree)


# Per-image outputs a model's aux may hold (concatenated over micro-batches); its scalar loss terms, averaged over
# micro-batches, are those its kind declares.
_AUX_PER_IMAGE = ('selected_prototype', 'nearest_prototype')
_LABEL_DROPOUT_STREAM = 1  # fold_in index of the label-dropout draws within a step's key


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, tx: optax.GradientTransformation,
               schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
               learning_rate_fn: Callable[[jax.Array], jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """(state, global batch {'image': (B,H,W,C), ['label': (B,)]}) -> (next state, scalar metrics).

  train.grad_accum_steps = n > 1 runs n micro-batches of B/n images in a lax.scan (activations of B/n images in memory),
  averages their gradients and losses, then makes one update. t, noise and the prototype usage are those of the whole
  batch, so for a model without BatchNorm this is the step of one batch of B (dropout masks aside: micro-batch i draws
  them from fold_in(dropout key, i)). f_phi's BatchNorm (pdm / spdm) differs: each micro-batch is normalised with its
  own statistics, and the running statistics are updated n times in turn (momentum applied n times), as n steps of B/n
  would.
  """
  images = batch['image']
  labels = batch.get('label')
  num_images = images.shape[0]
  num_micro = config.train.grad_accum_steps
  check_grad_accum_steps(num_images, num_micro)
  # Every draw of step s comes from fold_in(run key, s): the same numbers whatever the device count. t and noise
  # are drawn for the whole batch, so an image sees the same ones whatever the number of micro-batches.
  step_rng = jax.random.fold_in(state.rng, state.step)
  t_rng, noise_rng, dropout_rng = jax.random.split(step_rng, 3)
  t = jax.random.randint(t_rng, (num_images,), 0, schedule.num_timesteps)
  noise = jax.random.normal(noise_rng, images.shape, images.dtype)
  inputs = dict(image=images, noise=noise, t=t)
  if labels is not None:
    inputs['label'] = labels
  label_dropout = config.train.get('label_dropout', 0.0)
  if label_dropout and model.kind.class_conditional:
    # Classifier-free guidance's training half: these images are denoised with the null class. A key of its own
    # (fold_in), so t, noise and dropout draw the same numbers with or without label dropout.
    inputs['drop'] = jax.random.bernoulli(jax.random.fold_in(step_rng, _LABEL_DROPOUT_STREAM), label_dropout,
                                          (num_images,))

  def micro_step(batch_stats, micro, dropout_rng):
    """(B', ...) inputs -> (grads, scalar losses (means over B' images), per-image aux (B',), new batch_stats)."""
    x_t = diffusion.q_sample(schedule, micro['image'], micro['t'], micro['noise'])

    def loss_fn(params):
      variables = {'params': params}
      if batch_stats:
        variables['batch_stats'] = batch_stats
      (output, aux), mutated = model.apply(
          variables, x_t, micro['t'], clean_images=micro['image'], labels=micro.get('label'),
          drop_condition=micro.get('drop'), train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      diffusion_loss = diffusion.loss(schedule, output, micro['image'], micro['noise'], micro['t'],
                                      prediction_type=config.diffusion.prediction_type,
                                      weighting=config.diffusion.loss_weighting, snr_gamma=config.diffusion.snr_gamma)
      loss = diffusion_loss + aux.get('prototype_loss', 0.0)
      return loss, (diffusion_loss, aux, mutated.get('batch_stats', {}))

    (loss, (diffusion_loss, aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    scalars = dict(loss=loss, diffusion_loss=diffusion_loss, **{k: aux[k] for k in model.kind.loss_terms})
    return grads, scalars, {k: aux[k] for k in _AUX_PER_IMAGE if k in aux}, new_stats or batch_stats

  if num_micro == 1:
    grads, scalars, per_image, batch_stats = micro_step(state.batch_stats, inputs, dropout_rng)
    per_image_labels = labels
  else:
    micro_batches = _split_micro_batches(inputs, num_micro)

    def accumulate(carry, xs):
      # Only sums and BatchNorm statistics are carried: memory holds one micro-batch's activations at a time.
      grad_sum, scalar_sum, batch_stats = carry
      index, micro = xs
      grads, scalars, per_image, batch_stats = micro_step(batch_stats, micro, jax.random.fold_in(dropout_rng, index))
      carry = (jax.tree.map(jnp.add, grad_sum, grads), jax.tree.map(jnp.add, scalar_sum, scalars), batch_stats)
      return carry, per_image

    first = jax.tree.map(lambda x: x[0], micro_batches)
    scalar_shapes = jax.eval_shape(micro_step, state.batch_stats, first, dropout_rng)[1]
    def zeros(tree):
      return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)

    (grad_sum, scalar_sum, batch_stats), per_image = jax.lax.scan(
        accumulate, (zeros(state.params), zeros(scalar_shapes), state.batch_stats),
        (jnp.arange(num_micro), micro_batches))
    # Micro-batches are equal in size, so the mean of their means is the mean over the whole batch.
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)
    scalars = jax.tree.map(lambda s: s / num_micro, scalar_sum)
    # (n, B/n) -> (B,): prototype usage is counted over the whole batch (in micro-batch order, as are the labels).
    per_image = jax.tree.map(lambda x: x.reshape(-1), per_image)
    per_image_labels = None if labels is None else micro_batches['label'].reshape(-1)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, config.train.ema_decay)
  # e + (1 - decay)(p - e), not decay e + (1 - decay) p: the same average, but exact where p == e (parameters
  # that never changed, such as frozen ones, keep their EMA bit for bit).
  ema_params = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema_params, params)

  grad_norm, param_norm = optax.global_norm(grads), optax.global_norm(params)
  finite = jnp.isfinite(scalars['loss'] + grad_norm + param_norm)
  metrics = dict(scalars, grad_norm=grad_norm, param_norm=param_norm, learning_rate=learning_rate_fn(state.step),
                 # 1.0 while loss, gradients and new parameters are all finite: the loop never saves a state without it.
                 finite=finite.astype(jnp.float32))
  if config.train.get('on_nonfinite', 'stop') == 'skip':
    # A non-finite update is dropped (the step still counts, so the data stream moves on): the state stays finite.
    params, opt_state, ema_params, batch_stats = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, opt_state, ema_params, batch_stats),
        (state.params, state.opt_state, state.ema_params, state.batch_stats))
    metrics.update(finite=jnp.ones((), jnp.float32), skipped=1.0 - finite.astype(jnp.float32))
  if 'selected_prototype' in per_image:
    metrics.update(prototype_usage(per_image['selected_prototype'], model.num_prototypes))
    if model.kind.class_conditional:
      # How often f_phi's nearest prototype is the labelled one: is the memory learning the classes?
      metrics['prototype_accuracy'] = jnp.mean((per_image['nearest_prototype'] == per_image_labels).astype(jnp.float32))
  next_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                             ema_params=ema_params)
  return next_state, metrics


def make_train_step(model, tx, schedule, config, learning_rate_fn, mesh) -> Callable[..., Any]:
  """The jit-compiled step: state replicated and donated, batch split over the mesh's data axis."""
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                           learning_rate_fn=learning_rate_fn)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)), donate_argnums=(0,),
                 compiler_options=xla_options.compiler_options())
