"""The unconditional DDPM baseline on STL-10 with the reference's UNet, data and budget
(see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=stl10 --data_dir=DATA
Run: python main.py --config=configs/stl10_ddpm.py --workdir=workdirs/stl10_ddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('stl10', 'ddpm')
