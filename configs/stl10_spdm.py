"""s-PDM (one prototype per class) on STL-10 (the labelled train+test images), with the reference's hyperparameters (see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=stl10 --data_dir=DATA
Run: python main.py --config=configs/stl10_spdm.py --workdir=workdirs/stl10_spdm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('stl10', 'spdm')
