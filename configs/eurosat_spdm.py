"""s-PDM (one prototype per class) on EuroSAT, with the reference's hyperparameters (see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=eurosat/rgb --data_dir=DATA
Run: python main.py --config=configs/eurosat_spdm.py --workdir=workdirs/eurosat_spdm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('eurosat/rgb', 'spdm')
