"""ProtoDiffusion (Baykal et al., ACML 2023) on Tiny ImageNet with the reference's UNet, data and budget
(see configs/paper.py; stage 1 trains a prototype classifier with 128-dimensional class centres, which start the
class embedding, frozen as in the seed README (protodiffusion.mode=proto_frozen); plain epsilon MSE, label
dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=tiny_imagenet --data_dir=DATA
Run: python main.py --config=configs/tiny_imagenet_protodiffusion.py --workdir=workdirs/tiny_imagenet_protodiffusion --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('tiny_imagenet', 'protodiffusion')
