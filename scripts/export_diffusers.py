r"""Exports a trained ddpm / cddpm / protodiffusion run as a diffusers folder: UNet2DModel weights and config,
DDPMScheduler config.

  python scripts/export_diffusers.py --config=configs/digits_ddpm.py --workdir=workdirs/digits_ddpm \
      --output=exports/digits_ddpm

Pass the run's own --config and overrides, as for --mode=sample. The latest checkpoint's EMA parameters are exported
(--use_ema=false: the raw ones). With diffusers installed, a ddpm export is a pipeline:
  diffusers.DDPMPipeline.from_pretrained('exports/digits_ddpm')
and a cddpm / protodiffusion export a UNet2DModel (in DIR/unet) to call with class_labels=, plus its DDPMScheduler
(DIR/scheduler).
pdm / spdm models condition the UNet bottleneck on prototypes, which a UNet2DModel cannot express: they are refused.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

# Lets `python scripts/export_diffusers.py` import the package from a checkout without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from pdm_jax import preflight
from pdm_jax import workdir_lock
from pdm_jax.inference import restore
from pdm_jax.models import diffusers_export
from pdm_jax.models import kinds
from pdm_jax.training import checkpoints
# pylint: enable=g-import-not-at-top,wrong-import-position

# Errors that mean "change your input", reported as one line (main.py's set; pdm_jax.cli is not imported, as it
# defines flags of the same names).
_USER_ERRORS = (ValueError, FileNotFoundError, checkpoints.CheckpointError, workdir_lock.WorkdirBusyError)


def export_workdir(config: ml_collections.ConfigDict, workdir: str, output: str, use_ema: bool = True) -> list[str]:
  """Writes the latest checkpoint of `workdir` to `output` as a diffusers folder; returns the files written."""
  # Everything a user can get wrong is checked before the checkpoint is read.
  diffusers_export.check_exportable(kinds.get(config.model.type))
  preflight.check_diffusion(config)
  diffusers_export.scheduler_config(config.diffusion)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir={workdir} does not exist: pass the workdir of a trained run')
  # Held like --mode=sample: a run training in the same workdir could delete the checkpoint being read.
  with workdir_lock.WorkdirLock(workdir, 'export'):
    experiment, state = restore.restore_latest(config, workdir)
    try:
      params = jax.device_get(state.ema_params if use_ema else state.params)
      return diffusers_export.export_pipeline(experiment.model, params, experiment.info.image_size,
                                              config.diffusion, output)
    finally:
      experiment.checkpointer.close()


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config of the trained run (configs/*.py), with the same '
                                          'overrides.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of the trained run; its latest checkpoint is exported.')
_OUTPUT = flags.DEFINE_string('output', None, 'New (or empty) directory for the diffusers folder.')
_USE_EMA = flags.DEFINE_bool('use_ema', True, 'Export the EMA parameters; false: the raw training parameters.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    files = export_workdir(_CONFIG.value, _WORKDIR.value, _OUTPUT.value, _USE_EMA.value)
  except _USER_ERRORS as e:
    sys.exit(f'error: {e}')
  print(f'Wrote {len(files)} files to {_OUTPUT.value}:', *files, sep='\n  ')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir', 'output'])
  app.run(main)
