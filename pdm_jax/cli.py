"""pdm-jax command line: pdm-jax --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval|inspect].

(python main.py takes the same flags.) Any config field can be overridden, e.g. --config.train.num_steps=100
--config.sample.method=ddim.
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pdm_jax import compilation_cache
from pdm_jax import distributed
from pdm_jax import huge_pages
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
flags.DEFINE_bool('distributed', False, 'Join a run of several processes first: jax.distributed.initialize(), which '
                  'detects SLURM / Open MPI coordinates, or takes the three flags below.')
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, for launches by hand (implies --distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in the run, for launches by hand (implies '
                     '--distributed).')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes), for launches by hand (implies '
                     '--distributed).')
flags.mark_flags_as_required(['config', 'workdir'])
_FLAG_NAMES = ('config', 'workdir', 'mode', 'distributed', 'coordinator_address', 'num_processes', 'process_id')


class _QuietLibraries:
  """Drops INFO lines from Orbax (dozens per checkpoint) so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def _run(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before anything compiles: the cache must be on for the first program to be read from (or written to) it.
  compilation_cache.setup()
  coordinates = dict(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                     process_id=FLAGS.process_id)
  if FLAGS.distributed or any(value is not None for value in coordinates.values()):
    try:
      distributed.initialize(**coordinates)
    except ValueError as e:
      sys.exit(f'error: {e}')
  logging.info('JAX processes %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    entry_points = dict(train=run.train_and_evaluate, sample=run.sample, eval=run.evaluate, inspect=run.inspect)
    entry_points[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug('Full traceback:', exc_info=True)  # shown with --verbosity=1
    sys.exit(f'error: {e}')


def _config_arg(argv: list[str]) -> str | None:
  """The value of --config in argv, if given as --config=VALUE or --config VALUE."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config's input errors (missing file, unknown field, bad value) as one line."""
  config_arg = _config_arg(argv)
  if config_arg is not None and not os.path.isfile(config_arg.split(':', 1)[0]):
    sys.exit(f'error: --config={config_arg}: no such file (from {os.getcwd()}): pass a config file, e.g. '
             '--config=configs/digits_spdm.py.')
  try:
    remaining = FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config does not have
    message = str(e).replace('\\n', '\n')
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', message)
    bad = suggestion.group(2) if suggestion else None
    override = next((a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.') and bad
                     and re.search(rf'\.{re.escape(bad)}(=|\.|$)', a.split('=', 1)[0])), 'a --config.<field> override')
    sys.exit(f'error: {override}: the config has no such field'
             + (f' (did you mean "{suggestion.group(1)}"?)' if suggestion else '')
             + '; configs/default.py lists every field.')
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # A config module that raises: absl puts its traceback in the message; its last line is the error itself.
    sys.exit(f'error: {lines[0]} {lines[-1]}' if lines[0].endswith(':') else f'error: {lines[0]}')
  try:
    FLAGS.config.keys()  # the file is loaded lazily: a file that fails to load fails here
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's config module
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: --config={config_arg} could not be loaded: {lines[-1] if lines else type(e).__name__}')
  return remaining


def main():
  """Entry point of the `pdm-jax` console script and of main.py: parses the flags, then trains, samples or evaluates."""
  huge_pages.restart_with_huge_pages()  # a no-op after main.py's own call
  # absl's --help prints the __main__ module's docstring and key flags; the console script's generated __main__ has
  # neither, so lend it ours (main.py keeps its own docstring).
  main_module = sys.modules['__main__']
  if not main_module.__doc__:
    main_module.__doc__ = __doc__
  for name in _FLAG_NAMES:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  app.run(_run, flags_parser=_parse_flags)
