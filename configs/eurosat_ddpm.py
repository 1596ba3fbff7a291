"""The unconditional DDPM baseline on EuroSAT with the reference's UNet, data and budget
(see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=eurosat/rgb --data_dir=DATA
Run: python main.py --config=configs/eurosat_ddpm.py --workdir=workdirs/eurosat_ddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('eurosat/rgb', 'ddpm')
