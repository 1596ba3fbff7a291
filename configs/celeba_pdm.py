"""PDM (unsupervised prototypes) on CelebA, with the reference's hyperparameters (see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=celeb_a --data_dir=DATA
Run: python main.py --config=configs/celeba_pdm.py --workdir=workdirs/celeba_pdm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('celeb_a', 'pdm')
