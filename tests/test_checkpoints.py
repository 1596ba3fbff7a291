"""The checkpointer's logging: orbax's INFO records are dropped, its warnings and our own INFO lines are not."""

import logging as std_logging
import os

import jax.numpy as jnp
from absl import logging

from pdm_jax.training import checkpoints


class _Records(std_logging.Handler):
  def __init__(self):
    super().__init__(std_logging.DEBUG)
    self.records = []

  def emit(self, record):
    self.records.append(record)


def test_orbax_info_is_dropped_but_its_warnings_and_our_info_pass(tmp_path):
  handler = _Records()
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.addHandler(handler)
  absl_logger.setLevel(std_logging.INFO)
  try:
    checkpointer = checkpoints.Checkpointer(str(tmp_path), every=1, keep=2)
    checkpointer.save(0, {'w': jnp.ones(3)}, force=True)
    checkpointer.close()
    logging.info('our progress line')
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(level)
  from_orbax = [r for r in handler.records if f'{os.sep}orbax{os.sep}' in r.pathname]
  assert not [r for r in from_orbax if r.levelno < std_logging.WARNING]
  assert any(r.getMessage() == 'our progress line' for r in handler.records)
  # The filter itself: an orbax warning passes, an orbax INFO record does not.
  quiet = checkpoints.QuietOrbaxInfo()
  record = lambda level: std_logging.LogRecord('absl', level, f'{os.sep}x{os.sep}orbax{os.sep}m.py', 1, 'm', (), None)
  assert quiet.filter(record(std_logging.WARNING)) and not quiet.filter(record(std_logging.INFO))
