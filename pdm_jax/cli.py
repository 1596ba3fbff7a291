"""pdm-jax command line: pdm-jax --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval].

(python main.py takes the same flags.) Any config field can be overridden, e.g. --config.train.num_steps=100
--config.sample.method=ddim.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pdm_jax import run
from pdm_jax import workdir_lock
from pdm_jax.training import checkpoints

# Errors that mean "change your input", reported as one line; anything else keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, checkpoints.CheckpointError,
               workdir_lock.WorkdirBusyError)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples (resumed if it exists).')
flags.DEFINE_enum('mode', 'train', run.MODES, 'train: train (resuming) then sample; sample: latest checkpoint; '
                  'eval: FID / KID / IS of the latest checkpoint.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() first (multi-host clusters).')
flags.mark_flags_as_required(['config', 'workdir'])
_FLAG_NAMES = ('config', 'workdir', 'mode', 'distributed')


class _QuietLibraries:
  """Drops INFO lines from Orbax (dozens per checkpoint) so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def _run(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info('JAX processes %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    if FLAGS.mode == 'train':
      run.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'sample':
      run.sample(FLAGS.config, FLAGS.workdir)
    else:
      run.evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug('Full traceback:', exc_info=True)  # shown with --verbosity=1
    sys.exit(f'error: {e}')


def main():
  """Entry point of the `pdm-jax` console script and of main.py: parses the flags, then trains, samples or evaluates."""
  # absl's --help prints the __main__ module's docstring and key flags; the console script's generated __main__ has
  # neither, so lend it ours (main.py keeps its own docstring).
  main_module = sys.modules['__main__']
  if not main_module.__doc__:
    main_module.__doc__ = __doc__
  for name in _FLAG_NAMES:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  app.run(_run)
