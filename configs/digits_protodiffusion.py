"""ProtoDiffusion (Baykal et al., ACML 2023) on the embedded digits set, trained for classifier-free guidance.

Run: python main.py --config=configs/digits_protodiffusion.py --workdir=workdirs/digits_protodiffusion
Stage 1 (the prototype classifier) runs first in the same command; its checkpoint is
<workdir>/prototype_classifier/. Other modes: --config.protodiffusion.mode=proto_unfrozen (or regular).
Guided samples: add --mode=sample --config.sample.guidance_scale=2
"""

from configs import default


def get_config():
  """The small digits UNet; a 128-dimensional class embedding started from the prototype classifier's frozen class
  centres, projected to the time embedding; 10% of labels dropped to a null class; plain epsilon MSE."""
  config = default.get_config()
  config.model.type = 'protodiffusion'
  config.model.prototype_dim = 128
  config.protodiffusion.mode = 'proto_frozen'
  config.protodiffusion.classifier_steps = 500  # ~35 epochs of the 1,797 digits at batch 128
  config.train.label_dropout = 0.1
  return config
