"""The class-conditional DDPM baseline on CIFAR-10 with the reference's UNet, data and budget
(see configs/paper.py; cddpm: min-SNR weighting, label dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=cifar10 --data_dir=DATA
Run: python main.py --config=configs/cifar10_cddpm.py --workdir=workdirs/cifar10_cddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('cifar10', 'cddpm')
