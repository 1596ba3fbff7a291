"""The class-conditional DDPM baseline on CelebA with the reference's UNet, data and budget
(see configs/paper.py; cddpm: min-SNR weighting, label dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=celeb_a --data_dir=DATA
Run: python main.py --config=configs/celeba_cddpm.py --workdir=workdirs/celeba_cddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('celeb_a', 'cddpm')
