"""s-PDM on the embedded digits set (8x8, 10 classes): the Quickstart job, under 10 minutes on 2 CPU cores.

Run: python main.py --config=configs/digits_spdm.py --workdir=workdirs/digits_spdm
"""

from configs import default


def get_config():
  """One prototype per digit class; samples are class-conditional (balanced over the ten digits)."""
  config = default.get_config()
  config.model.type = 'spdm'
  return config
