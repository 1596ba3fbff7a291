"""The unconditional DDPM baseline on Tiny ImageNet with the reference's UNet, data and budget
(see configs/paper.py).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=tiny_imagenet --data_dir=DATA
Run: python main.py --config=configs/tiny_imagenet_ddpm.py --workdir=workdirs/tiny_imagenet_ddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('tiny_imagenet', 'ddpm')
