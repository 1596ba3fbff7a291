"""PDM (unsupervised prototypes) on STL-10, with the reference's hyperparameters (see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=stl10 --data_dir=DATA
Run: python main.py --config=configs/stl10_pdm.py --workdir=workdirs/stl10_pdm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  # PDM needs no labels, so it can also use the 100,000 unlabelled images: --config.data.split=unlabelled
  return paper.get_config('stl10', 'pdm')
