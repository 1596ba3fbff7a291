"""The unconditional DDPM baseline on the embedded digits set.

Run: python main.py --config=configs/digits_ddpm.py --workdir=workdirs/digits_ddpm
"""

from configs import default


def get_config():
  """The same UNet with no conditioning."""
  config = default.get_config()
  config.model.type = 'ddpm'
  config.data.use_labels = False
  return config
