"""ProtoDiffusion (Baykal et al., ACML 2023) on CIFAR-10 with the reference's UNet, data and budget
(see configs/paper.py; stage 1 trains a prototype classifier with 128-dimensional class centres, which start the
class embedding, frozen as in the seed README (protodiffusion.mode=proto_frozen); plain epsilon MSE, label
dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=cifar10 --data_dir=DATA
Run: python main.py --config=configs/cifar10_protodiffusion.py --workdir=workdirs/cifar10_protodiffusion --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('cifar10', 'protodiffusion')
