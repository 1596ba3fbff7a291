"""The training loop: mesh, input, model, state, restore, compiled step, metrics, checkpoints."""

import dataclasses
import os
import signal
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from pdm_jax import data
from pdm_jax import diffusion
from pdm_jax import distributed
from pdm_jax.models import factory
from pdm_jax.training import checkpoints
from pdm_jax.training import optimizer
from pdm_jax.training import prototype_classifier
from pdm_jax.training import sharding
from pdm_jax.training import state as state_lib
from pdm_jax.training import train_step as train_step_lib


@dataclasses.dataclass
class Experiment:
  """What the loop and the samplers share: the built model and its context."""
  config: ml_collections.ConfigDict
  model: Any
  schedule: diffusion.Schedule
  info: data.DatasetInfo
  mesh: Any
  checkpointer: checkpoints.Checkpointer
  tx: Any
  learning_rate_fn: Any

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.info.image_size, self.info.image_size, self.info.num_channels)


def run_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys for init, training, sampling and ProtoDiffusion's prototype classifier, all from the seed."""
  root = jax.random.PRNGKey(seed)
  init, train, sample = jax.random.split(root, 3)
  # fold_in, not a fourth split: the three keys above stay those of every earlier run.
  return dict(init=init, train=train, sample=sample, prototype_classifier=jax.random.fold_in(root, 1))


def build_experiment(config: ml_collections.ConfigDict, workdir: str, info: data.DatasetInfo,
                     mesh=None, checkpointer: checkpoints.Checkpointer | None = None) -> Experiment:
  """Model, schedule, optimizer and checkpointer for `config` on data described by `info`. `checkpointer`: one
  already open on workdir to use (else one is opened here)."""
  mesh = sharding.data_mesh() if mesh is None else mesh
  model = factory.build_model(config.model, image_size=info.image_size, num_channels=info.num_channels,
                              num_classes=info.num_classes, null_class=factory.has_null_class(config))
  schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps,
                                     config.diffusion.beta_start, config.diffusion.beta_end)
  if checkpointer is None:
    checkpointer = checkpoints.Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  return Experiment(config=config, model=model, schedule=schedule, info=info, mesh=mesh, checkpointer=checkpointer,
                    tx=optimizer.make_optimizer(config.train, prototype_classifier.frozen_parameters(config)),
                    learning_rate_fn=optimizer.learning_rate_schedule(config.train))


def initial_state(experiment: Experiment, class_centres: np.ndarray | None = None) -> state_lib.TrainState:
  """A fresh replicated TrainState, or the latest checkpoint's when the workdir has one.

  class_centres (K, prototype_dim): ProtoDiffusion's stage-1 centres, the fresh state's class embedding rows (and
  their EMA). A restored state keeps its own.
  """
  keys = run_keys(experiment.config.seed)
  replicated = sharding.replicated(experiment.mesh)
  init = jax.jit(lambda: state_lib.create_train_state(experiment.model, experiment.tx, keys['init'], keys['train'],
                                                      experiment.image_shape), out_shardings=replicated)
  signature = checkpoints.model_signature(experiment.config, experiment.image_shape, experiment.model.num_prototypes)
  if experiment.model.kind.class_prototypes:
    # Frozen parameters change the optimizer state's structure: a checkpoint fits only the same freeze.
    signature['frozen_parameters'] = list(prototype_classifier.frozen_parameters(experiment.config))
  experiment.checkpointer.check_signature(signature)
  latest = experiment.checkpointer.latest_step()
  if latest is not None:
    logging.info('Resuming from checkpoint %d in %s', latest, experiment.checkpointer.directory)
    # Restoring needs only shapes, dtypes and shardings: tracing init costs well under a second, compiling it
    # tens of seconds on a CPU (every --mode=sample / eval would pay that).
    return experiment.checkpointer.restore_latest_readable(jax.eval_shape(init))
  if class_centres is None:
    if prototype_classifier.uses_centres(experiment.config):
      raise ValueError(f'protodiffusion.mode={experiment.config.protodiffusion.mode} starts from the prototype '
                       'classifier: train with run.train_and_evaluate, or pass class_centres='
                       'prototype_classifier.train_stage_one(...).')
    return init()
  state = init()
  return state.replace(params=prototype_classifier.with_class_centres(state.params, class_centres),
                       ema_params=prototype_classifier.with_class_centres(state.ema_params, class_centres))


# Exit status of a run stopped by SIGTERM after saving: what a process killed by SIGTERM reports (128 + 15), so
# schedulers that requeue preempted jobs treat it alike, and distinct from errors (1).
PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
  """The run stopped on SIGTERM with its state saved; rerunning the same command resumes."""

  def __init__(self, message: str):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.message = message

  def __str__(self) -> str:
    return self.message


class _PreemptionFlag:
  """While training: SIGTERM (how schedulers preempt) sets a flag so the loop saves and stops between steps.

  A context manager: on leaving it the previous handler is back, so SIGTERM during final sampling or evaluation
  stops the process at once (the final checkpoint is already saved).
  """

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self) -> '_PreemptionFlag':
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (some test runners): no preemption handling there
      pass
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True


class _PreemptionAgreement:
  """Several processes stop at the same step: SIGTERM may reach only some of them, or reach them steps apart.

  Each step every process adds its flag to a tiny all-reduce over the mesh, read one step later (finished by then,
  so it never stalls the device): all processes stop after the same step, the one following any flag. With one
  process the flag itself decides, at once.
  """

  def __init__(self, flag: _PreemptionFlag, mesh):
    self._flag = flag
    self._pending = None
    self._several = jax.process_count() > 1
    if self._several:
      self._sharding = sharding.batch_sharded(mesh)
      self._local_devices = len(mesh.local_devices)
      self._any = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))

  def stop(self) -> bool:
    """Called once after each step, by every process: whether to save and stop now."""
    if not self._several:
      return self._flag.raised
    previous = self._pending
    local = np.full((self._local_devices,), self._flag.raised, np.int32)
    self._pending = self._any(jax.make_array_from_process_local_data(self._sharding, local))
    return previous is not None and bool(jax.device_get(previous))

  def stop_late(self) -> bool:
    """After the step's hooks: one process acts on a SIGTERM that came during them; several wait for stop()."""
    return not self._several and self._flag.raised


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, gradient or parameter; nothing from it was saved."""


class _FiniteGuard:
  """Checks each step's on-device `finite` flag one step late, so reading it never stalls the device.

  check(step) blocks only on steps that have finished or are needed now (before a save, an evaluation, the end).
  """

  def __init__(self, checkpointer: checkpoints.Checkpointer):
    self.checkpointer = checkpointer
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def check(self, up_to: int) -> None:
    """Raises NonFiniteError if any step <= up_to was not finite."""
    while self._pending and self._pending[0][0] <= up_to:
      step, metrics = self._pending.pop(0)
      if float(jax.device_get(metrics['finite'])) != 1.0:
        values = {k: float(jax.device_get(metrics[k])) for k in ('loss', 'grad_norm', 'param_norm')}
        last_good = self.checkpointer.latest_step()
        where = (f'checkpoint {last_good} in {self.checkpointer.directory} is the last good one, and a rerun resumes '
                 'from it' if last_good is not None else 'no checkpoint was saved yet')
        raise NonFiniteError(
            f'step {step} was not finite (loss {values["loss"]:.4g}, gradient norm {values["grad_norm"]:.4g}, '
            f'parameter norm {values["param_norm"]:.4g}); nothing from it was saved: {where}. Lower '
            'train.learning_rate (or raise train.warmup_steps), or check the data.')


# A periodic action: (every_steps, hook); hook(experiment, state, step) runs after each step that is a multiple of
# every_steps (0: never), e.g. an evaluation. Hooks live outside the loop so it imports no evaluation code.
PeriodicHook = tuple[int, Callable[[Experiment, state_lib.TrainState, int], None]]


def train(config: ml_collections.ConfigDict, workdir: str, mesh=None,
          writer: metric_writers.MetricWriter | None = None,
          periodic: Sequence[PeriodicHook] = (),
          class_centres: np.ndarray | None = None) -> tuple[Experiment, state_lib.TrainState]:
  """Trains to config.train.num_steps from the latest checkpoint in workdir; returns the final state.

  periodic: (every_steps, hook(experiment, state, step)) pairs, run after the step's checkpoint is saved.
  class_centres: ProtoDiffusion's stage-1 centres (prototype_classifier.train_stage_one) for a fresh run.
  """
  for every, hook in periodic:
    if not isinstance(every, int) or every < 0 or not callable(hook):
      raise ValueError(f'periodic hooks must be (every_steps >= 0, callable), got ({every!r}, {hook!r}).')
  mesh = sharding.data_mesh() if mesh is None else mesh
  sharding.check_batch_divides(config.train.batch_size, mesh)
  train_step_lib.check_grad_accum_steps(config.train.batch_size, config.train.grad_accum_steps, mesh.size)
  own_writer = writer is None
  if own_writer:
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  # Input: built after reading the latest step, so a resumed run continues with the data it would have seen.
  probe = checkpoints.Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  start_step = probe.latest_step() or 0
  probe.close()

  def build_input(first_step: int):
    return data.build(config.data, global_batch_size=config.train.batch_size, seed=config.seed,
                      start_step=first_step, process_index=jax.process_index(), process_count=jax.process_count())

  info, batches = build_input(start_step)

  experiment = build_experiment(config, workdir, info, mesh)
  experiment.checkpointer.check_process_count(config.data.name, data.order_depends_on_process_count(config.data))
  state = initial_state(experiment, class_centres)
  if int(jax.device_get(state.step)) != start_step:
    # The latest checkpoint was unreadable and an older one restored: the data resumes from that one instead.
    start_step = int(jax.device_get(state.step))
    info, batches = build_input(start_step)
  num_steps = config.train.num_steps
  if start_step == 0:
    logging.info('Parameters: %d (EMA kept, decay %.4f); devices: %d; global batch %d',
                 state_lib.count_parameters(state.params), config.train.ema_decay, mesh.size,
                 config.train.batch_size)
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})

  step_fn = train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                           experiment.learning_rate_fn, mesh)
  # The one progress reporter: steps/s, ETA and the share of time in evaluations, logged every log_every steps
  # (and each minute), with steps_per_sec and uptime written as scalars.
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                    every_steps=config.train.log_every)
  guard = _FiniteGuard(experiment.checkpointer)
  pending: list[dict[str, jax.Array]] = []
  step = start_step
  try:
    with _PreemptionFlag() as preemption:
      agreement = _PreemptionAgreement(preemption, mesh)
      while step < num_steps:
        batch = sharding.global_batch(next(batches), mesh)
        if step == start_step:  # every step runs this one program: compile it (in step with the other processes)
          step_fn = distributed.compile_together(step_fn, state, batch, what='train_step')
        state, metrics = step_fn(state, batch)
        step += 1
        guard.add(step, metrics)
        guard.check(step - 1)  # the previous step, finished by now: no stall
        pending.append(metrics)
        report_progress(step)

        if step % config.train.log_every == 0 or step == num_steps:
          guard.check(step)
          # nanmean: with train.on_nonfinite='skip' a skipped step's NaN loss does not blank its whole window.
          averaged = {k: float(np.nanmean([m[k] for m in jax.device_get(pending)])) for k in pending[0]
                      if k != 'finite'}
          if averaged.get('skipped'):
            logging.warning('%d of the last %d steps were skipped: their loss or gradients were not finite '
                            "(train.on_nonfinite='skip').", round(averaged['skipped'] * len(pending)), len(pending))
          pending = []
          writer.write_scalars(step, averaged)  # the default writer also logs them

        stopping = agreement.stop()
        must_save = step == num_steps or stopping or experiment.checkpointer.should_save(step)
        if must_save:
          guard.check(step)  # never save a state that is not finite
          experiment.checkpointer.save(step, state, force=True)
        for every, hook in periodic:
          if every and step % every == 0:
            guard.check(step)
            with report_progress.timed('eval'):
              hook(experiment, state, step)
        if stopping or agreement.stop_late():
          if not must_save:  # SIGTERM during the hooks: the save above did not happen
            guard.check(step)
            experiment.checkpointer.save(step, state, force=True)
          experiment.checkpointer.close()
          message = f'Preempted (SIGTERM) at step {step}: checkpoint saved; rerun the same command to resume.'
          logging.warning(message)
          raise Preempted(message)

  except BaseException:
    # A save still being written asynchronously is a good checkpoint: let it commit before the error
    # propagates, so a crash or Ctrl-C loses no more than the steps since it.
    experiment.checkpointer.manager.wait_until_finished()
    raise

  experiment.checkpointer.manager.wait_until_finished()
  writer.flush()
  if own_writer:
    writer.close()
  return experiment, state


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """Nested config dict -> {'a.b': scalar-or-str} for the hparams writer."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(_flatten(value, name + '.'))
    else:
      flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat
