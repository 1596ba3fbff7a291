"""The class-conditional DDPM baseline on Tiny ImageNet with the reference's UNet, data and budget
(see configs/paper.py; cddpm: min-SNR weighting, label dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=tiny_imagenet --data_dir=DATA
Run: python main.py --config=configs/tiny_imagenet_cddpm.py --workdir=workdirs/tiny_imagenet_cddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('tiny_imagenet', 'cddpm')
