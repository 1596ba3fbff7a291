"""PDM (unsupervised prototypes) on the embedded digits set.

Run: python main.py --config=configs/digits_pdm.py --workdir=workdirs/digits_pdm
"""

from configs import default


def get_config():
  """K=10 learned prototypes, nearest one selected by f_phi; one drawn at random per sample when sampling."""
  config = default.get_config()
  config.model.type = 'pdm'
  config.model.num_prototypes = 10
  config.data.use_labels = False
  return config
