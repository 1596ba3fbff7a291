"""PDM (unsupervised prototypes) on CIFAR-10, with the reference's hyperparameters (see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=cifar10 --data_dir=DATA
Run: python main.py --config=configs/cifar10_pdm.py --workdir=workdirs/cifar10_pdm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('cifar10', 'pdm')
