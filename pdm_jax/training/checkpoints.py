"""Orbax checkpoints in <workdir>/checkpoints: periodic, last k kept, resumed automatically, model-checked."""

import json
import logging as std_logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from pdm_jax.models import factory

SIGNATURE_FILE = 'model_signature.json'
# How many processes trained these checkpoints (absent in workdirs written before it was recorded).
PROCESSES_FILE = 'processes.json'


class QuietOrbaxInfo(std_logging.Filter):
  """Drops orbax's INFO records (a screenful of manager options per run and lines per save, among our own progress
  lines); its warnings and errors pass. Orbax logs through absl's logger, so the filter sits there."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


if not any(isinstance(f, QuietOrbaxInfo) for f in logging.get_absl_logger().filters):
  logging.get_absl_logger().addFilter(QuietOrbaxInfo())


def model_signature(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                    num_prototypes: int) -> dict[str, Any]:
  """The settings that fix the parameter shapes and their meaning; a checkpoint only fits a run with the same ones.

  num_prototypes: the model's number of conditions (classes or prototypes). Written to the checkpoint directory, it
  also tells --mode=sample the image shape and classes without the training data.
  """
  fields = factory.shape_fields(config.model, num_prototypes, factory.has_null_class(config))
  return dict(model_type=config.model.type, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
              image_shape=list(image_shape), num_timesteps=config.diffusion.num_timesteps,
              prediction_type=config.diffusion.prediction_type)


def check_has_checkpoint(workdir: str) -> None:
  """FileNotFoundError naming the fix unless workdir holds a checkpoint step (creates nothing, unlike Checkpointer)."""
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(f'no checkpoint in {directory}: train first with --mode=train and the same --workdir.')


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot serve this run; the message says what to change."""


class Checkpointer:
  """Saves every `every` steps and at the end, keeps the newest `keep`, restores the latest."""

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None for a fresh workdir."""
    return self.manager.latest_step()

  def read_signature(self) -> dict[str, Any] | None:
    """The model signature recorded with these checkpoints (model_signature's fields), or None if there is none."""
    path = os.path.join(self.directory, SIGNATURE_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def check_signature(self, signature: dict[str, Any]) -> None:
    """Records the model signature on first use; refuses a directory written by a different model."""
    saved = self.read_signature()
    if saved is None:
      self._write_json(SIGNATURE_FILE, signature)
      return
    diffs = [f'{key}: saved {saved.get(key)!r}, now {value!r}' for key, value in signature.items()
             if saved.get(key) != value]
    if diffs:
      raise CheckpointError(f'{self.directory} holds checkpoints of a different model ({"; ".join(diffs)}): '
                            'use a new --workdir, or the config those checkpoints were trained with.')

  def check_process_count(self, data_name: str, order_depends_on_count: bool) -> None:
    """Records how many processes train into this directory; refuses to resume with another count when the input
    order depends on it (each process reading its own share of the examples), since the data would differ."""
    path = os.path.join(self.directory, PROCESSES_FILE)
    saved = None
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f).get('process_count')
    count = jax.process_count()
    if saved == count:
      return
    if saved is not None and order_depends_on_count and self.latest_step() is not None:
      raise CheckpointError(
          f'{self.directory} was trained by {saved} processes, this run has {count}: the {data_name} input gives each '
          f'process its own share of the examples, so the resumed run would see other data. Resume with {saved} '
          'processes, or use a new --workdir.')
    self._write_json(PROCESSES_FILE, dict(process_count=count))

  def _write_json(self, name: str, content: dict[str, Any]) -> None:
    """Process 0 writes <directory>/name whole (a temporary file renamed), so no process ever reads half of it."""
    if jax.process_index() != 0:
      return
    path = os.path.join(self.directory, name)
    with open(path + '.tmp', 'w') as f:
      json.dump(content, f, indent=1)
    os.replace(path + '.tmp', path)

  def restore(self, step: int, target: Any) -> Any:
    """Restores checkpoint `step` into the structure, dtypes and shardings of `target`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types; the user needs one sentence and the path
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} could not be restored ({type(e).__name__}: '
          f'{str(e).splitlines()[0][:200] if str(e) else ""}); move that step directory aside to resume from '
          'an earlier one, or use a new --workdir.') from e

  def restore_latest_readable(self, target: Any) -> Any:
    """Restores the newest checkpoint that can be read into `target`'s structure.

    An unreadable newer one (a partial write, a corrupt file) is moved to <workdir>/checkpoints_set_aside/ with a
    warning, never deleted, and the next older one is tried. With several processes the error stands instead (they
    would have to agree on what to move).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for index, step in enumerate(steps):
      try:
        return self.restore(step, target)
      except CheckpointError as error:
        if index == len(steps) - 1 or jax.process_count() > 1:
          raise
        aside = self._set_aside(step)
        logging.warning('%s Moved it to %s; trying checkpoint %d.', error, aside, steps[index + 1])
    raise CheckpointError(f'no checkpoint in {self.directory} to restore.')

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` out of the manager's directory (kept for inspection); returns where it went."""
    aside_dir = os.path.join(os.path.dirname(self.directory), 'checkpoints_set_aside')
    os.makedirs(aside_dir, exist_ok=True)
    target, suffix = os.path.join(aside_dir, str(step)), 1
    while os.path.exists(target):
      target, suffix = os.path.join(aside_dir, f'{step}.{suffix}'), suffix + 1
    os.rename(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    return target

  def should_save(self, step: int) -> bool:
    """Whether `step` is due a checkpoint (the interval, the first step of a directory, or an agreed preemption)."""
    return self.manager.should_save(step)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` as checkpoint `step` when the interval says so (or `force`); returns whether it did."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def close(self) -> None:
    """Waits for pending asynchronous writes and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()
