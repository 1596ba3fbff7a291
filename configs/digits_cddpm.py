"""The class-conditional DDPM baseline on the embedded digits set, trained for classifier-free guidance.

Run: python main.py --config=configs/digits_cddpm.py --workdir=workdirs/digits_cddpm
Guided samples: add --mode=sample --config.sample.guidance_scale=2
"""

from configs import default


def get_config():
  """The same UNet with a class embedding added to the time embedding; 10% of labels dropped to a null class."""
  config = default.get_config()
  config.model.type = 'cddpm'
  config.diffusion.loss_weighting = 'min_snr'
  config.train.label_dropout = 0.1
  return config
