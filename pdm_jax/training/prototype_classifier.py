"""ProtoDiffusion's stage 1: a prototype classifier whose K class centres start the diffusion model's class embedding.

The classifier is a feature network f (models/prototypes.py FeatureEncoder, feature_dim = model.prototype_dim) and K
learnable centres m_1..m_K. As in convolutional prototype learning (Yang et al., CVPR 2018), for a batch of B images
x_i with labels y_i:

  d_ik = ||f(x_i) - m_k||^2                                          squared Euclidean distance
  loss = 1/B sum_i -log( exp(-gamma d_iy_i) / sum_k exp(-gamma d_ik) )    distance-based cross-entropy
       + pull_weight * 1/B sum_i d_iy_i                                 pull of each feature to its class centre

and an image is classified as its nearest centre. Settings: config.protodiffusion (mode, classifier_steps,
classifier_learning_rate, gamma, pull_weight). It trains with Adam on the diffusion run's own data stream
(data.build, same seed and batch) and keeps an Orbax checkpoint in <workdir>/prototype_classifier/checkpoints;
a complete one is restored, never retrained.
"""

import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from pdm_jax import data
from pdm_jax.models import factory
from pdm_jax.models import kinds
from pdm_jax.models import pdm
from pdm_jax.models import prototypes as prototypes_lib
from pdm_jax.training import checkpoints
from pdm_jax.training import sharding

# regular: a random class embedding (no stage 1); proto_frozen: the centres, never updated; proto_unfrozen: the
# centres, then trained with the rest of the network.
MODES = ('regular', 'proto_frozen', 'proto_unfrozen')
SUBDIR = 'prototype_classifier'


def _settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  if 'protodiffusion' not in config:
    raise ValueError(f'model.type={config.model.type} needs a config.protodiffusion section: build the config on '
                     'configs/default.py.')
  return config.protodiffusion


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for config.protodiffusion (only read for kinds with class prototypes)."""
  if not kinds.get(config.model.type).class_prototypes:
    return
  settings = _settings(config)
  if settings.mode not in MODES:
    raise ValueError(f'protodiffusion.mode={settings.mode!r} is unknown: use one of {", ".join(MODES)}.')
  steps = settings.classifier_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f'protodiffusion.classifier_steps={steps!r} must be an integer >= 1 (stage 1 training steps).')
  for field, value, allow_zero in (('classifier_learning_rate', settings.classifier_learning_rate, False),
                                   ('gamma', settings.gamma, False), ('pull_weight', settings.pull_weight, True)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
      raise ValueError(f'protodiffusion.{field}={value!r} must be a number {">=" if allow_zero else ">"} 0.')


def uses_centres(config: ml_collections.ConfigDict) -> bool:
  """Whether a run starts its class embedding from the prototype classifier's centres (runs stage 1)."""
  check_config(config)
  return kinds.get(config.model.type).class_prototypes and config.protodiffusion.mode != 'regular'


def frozen_parameters(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Top-level diffusion parameters the optimizer must never change: the class centres in proto_frozen mode."""
  if uses_centres(config) and config.protodiffusion.mode == 'proto_frozen':
    return (pdm.CLASS_CENTRES,)
  return ()


def with_class_centres(params: Any, centres: np.ndarray) -> Any:
  """The diffusion parameters with the class embedding's rows 0..K-1 replaced by `centres` (K, prototype_dim)."""
  current = params[pdm.CLASS_CENTRES]
  if tuple(centres.shape) != tuple(current.shape):
    raise ValueError(f'prototype classifier centres have shape {tuple(centres.shape)}, the class embedding '
                     f'{tuple(current.shape)}: use the same model.prototype_dim and classes, or a new --workdir.')
  return {**params, pdm.CLASS_CENTRES: jax.device_put(jnp.asarray(centres, current.dtype), current.sharding)}


def classifier_loss(features: jax.Array, centres: jax.Array, labels: jax.Array, *, gamma: float,
                    pull_weight: float) -> dict[str, jax.Array]:
  """(B, D) features, (K, D) centres, (B,) labels -> scalar loss, cross_entropy, pull, accuracy (module docstring)."""
  squared = jnp.sum((features[:, None, :] - centres[None, :, :])**2, axis=-1)  # (B, K)
  log_probs = jax.nn.log_softmax(-gamma * squared, axis=-1)
  cross_entropy = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  pull = jnp.mean(jnp.take_along_axis(squared, labels[:, None], axis=-1))
  accuracy = jnp.mean((jnp.argmin(squared, axis=-1) == labels).astype(jnp.float32))
  return dict(loss=cross_entropy + pull_weight * pull, cross_entropy=cross_entropy, pull=pull, accuracy=accuracy)


class PrototypeClassifier(nn.Module):
  """(B, H, W, C) images -> ((B, feature_dim) features, (K, feature_dim) class centres)."""
  num_classes: int
  feature_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    features = prototypes_lib.FeatureEncoder(self.feature_dim, dtype=self.dtype, name='encoder')(images, train=train)
    # Centres of norm ~1, the scale of the freshly initialised features: a large init saturates the softmax at once.
    centres = self.param('centres', nn.initializers.normal(1.0 / np.sqrt(self.feature_dim)),
                         (self.num_classes, self.feature_dim))
    return features, centres


@flax.struct.dataclass
class ClassifierState:
  """Everything a resumed stage 1 needs: step, parameters, BatchNorm statistics and Adam's state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def _make_step(model: PrototypeClassifier, tx: optax.GradientTransformation, settings: ml_collections.ConfigDict,
               mesh) -> Callable[[ClassifierState, dict[str, jax.Array]], tuple[ClassifierState, dict]]:
  """The jit-compiled stage-1 step: state replicated and donated, batch split over the mesh."""
  def step(state: ClassifierState, batch: dict[str, jax.Array]):
    def loss_fn(params):
      (features, centres), mutated = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                                 batch['image'], train=True, mutable=['batch_stats'])
      terms = classifier_loss(features, centres, batch['label'], gamma=settings.gamma,
                              pull_weight=settings.pull_weight)
      return terms['loss'], (terms, mutated['batch_stats'])

    (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state), terms

  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)), donate_argnums=(0,))


def train_stage_one(config: ml_collections.ConfigDict, workdir: str, *, rng: jax.Array,
                    writer: metric_writers.MetricWriter | None = None, mesh=None) -> np.ndarray | None:
  """Trains (or restores) the prototype classifier; returns its (K, prototype_dim) centres for a fresh diffusion run.

  None when the run needs no centres: a kind without class prototypes, mode 'regular', or a diffusion run that
  resumes (its checkpoint holds the class embedding already). rng: loop.run_keys(seed)['prototype_classifier'].
  """
  if not uses_centres(config):
    return None
  probe = checkpoints.Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  resuming = probe.latest_step() is not None
  probe.close()
  if resuming:
    logging.info('Stage 1 skipped: the diffusion checkpoint in %s already holds the class embedding.', workdir)
    return None

  settings = config.protodiffusion
  mesh = sharding.data_mesh() if mesh is None else mesh
  sharding.check_batch_divides(config.train.batch_size, mesh)
  info = data.describe(config.data)
  num_classes = kinds.get(config.model.type).num_conditions(config.model.num_prototypes, info.num_classes)
  image_shape = (info.image_size, info.image_size, info.num_channels)
  model = PrototypeClassifier(num_classes, config.model.prototype_dim, dtype=factory.compute_dtype(config.model.dtype))
  tx = optax.adam(settings.classifier_learning_rate)
  replicated = sharding.replicated(mesh)

  def init() -> ClassifierState:
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
    return ClassifierState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))

  init = jax.jit(init, out_shardings=replicated)
  checkpointer = checkpoints.Checkpointer(os.path.join(workdir, SUBDIR), config.train.checkpoint_every, 1)
  try:
    checkpointer.check_signature(dict(num_classes=num_classes, feature_dim=config.model.prototype_dim,
                                      image_shape=list(image_shape)))
    latest = checkpointer.latest_step()
    state = init() if latest is None else checkpointer.restore_latest_readable(jax.eval_shape(init))
    start = int(jax.device_get(state.step))
    if start >= settings.classifier_steps:
      logging.info('Stage 1 skipped: prototype classifier checkpoint %d in %s is complete.', start,
                   checkpointer.directory)
    else:
      state = _train(model, tx, state, config, mesh, checkpointer, writer)
  finally:
    checkpointer.close()
  return np.asarray(jax.device_get(state.params['centres']))


def _train(model, tx, state: ClassifierState, config: ml_collections.ConfigDict, mesh,
           checkpointer: checkpoints.Checkpointer, writer: metric_writers.MetricWriter | None) -> ClassifierState:
  """Runs stage 1 from state.step to classifier_steps, saving as the diffusion loop does and at the end."""
  settings = config.protodiffusion
  start, num_steps = int(jax.device_get(state.step)), settings.classifier_steps
  # The diffusion run's stream, resumed at this stage's step: the same images in the same order as a fresh run.
  info, batches = data.build(config.data, global_batch_size=config.train.batch_size, seed=config.seed,
                             start_step=start, process_index=jax.process_index(), process_count=jax.process_count())
  if info.num_classes is None:
    raise ValueError(f'protodiffusion.mode={settings.mode} trains a prototype classifier on labels, but '
                     f'{info.name} has none here: set data.use_labels=True.')
  step_fn = _make_step(model, tx, settings, mesh)
  logging.info('Stage 1: prototype classifier (%d centres of dimension %d), steps %d..%d', model.num_classes,
               model.feature_dim, start, num_steps)
  pending = []
  for step in range(start + 1, num_steps + 1):
    state, terms = step_fn(state, sharding.global_batch(next(batches), mesh))
    pending.append(terms)
    if step % config.train.log_every == 0 or step == num_steps:
      averaged = {k: float(np.mean([t[k] for t in jax.device_get(pending)])) for k in pending[0]}
      pending = []
      if not np.isfinite(averaged['loss']):
        raise FloatingPointError(f'prototype classifier step {step}: loss {averaged["loss"]:.4g} is not finite; '
                                 'lower protodiffusion.classifier_learning_rate or protodiffusion.gamma.')
      logging.info('prototype classifier step %d/%d loss %.4f accuracy %.4f', step, num_steps, averaged['loss'],
                   averaged['accuracy'])
      if writer is not None:
        writer.write_scalars(step, {f'prototype_classifier/{k}': v for k, v in averaged.items()})
    if step == num_steps or checkpointer.should_save(step):
      checkpointer.save(step, state, force=True)
  checkpointer.manager.wait_until_finished()
  return state
