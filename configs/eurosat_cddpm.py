"""The class-conditional DDPM baseline on EuroSAT with the reference's UNet, data and budget
(see configs/paper.py; cddpm: min-SNR weighting, label dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=eurosat/rgb --data_dir=DATA
Run: python main.py --config=configs/eurosat_cddpm.py --workdir=workdirs/eurosat_cddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('eurosat/rgb', 'cddpm')
