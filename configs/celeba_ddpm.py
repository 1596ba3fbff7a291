"""The unconditional DDPM baseline on CelebA with the reference's UNet, data and budget
(see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=celeb_a --data_dir=DATA
Run: python main.py --config=configs/celeba_ddpm.py --workdir=workdirs/celeba_ddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('celeb_a', 'ddpm')
