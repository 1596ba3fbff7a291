"""pdm-jax command line: python main.py --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval|inspect].

Any config field can be overridden, e.g. --config.train.num_steps=100 --config.sample.method=ddim.
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
                  'eval: FID / KID / IS of the latest checkpoint; inspect: plots of its prototypes (pdm / spdm).')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() first (multi-host clusters).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops INFO lines from Orbax (dozens per checkpoint) so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
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
    elif FLAGS.mode == 'eval':
      run.evaluate(FLAGS.config, FLAGS.workdir)
    else:
      run.inspect(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug('Full traceback:', exc_info=True)  # shown with --verbosity=1
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
