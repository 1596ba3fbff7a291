"""The class-conditional DDPM baseline on CelebA with the reference's UNet, data and budget
(see configs/paper.py; cddpm: min-SNR weighting, label dropout 0.1 for guidance).

Prepare the data once (needs internet): python scripts/prepare_data.py --dataset=celeb_a --data_dir=DATA
(its Google Drive download often fails: download the CelebA files by hand and add --manual_dir=FOLDER, see
scripts/prepare_data.py; or train on the unzipped faces with --config.data.name=image_folder
--config.data.data_dir=.../img_align_celeba --config.data.attributes_file=.../list_attr_celeba.txt
--config.data.resize_mode=squash)
Run: python main.py --config=configs/celeba_cddpm.py --workdir=workdirs/celeba_cddpm --config.data.data_dir=DATA
"""

from configs import paper


def get_config():
  return paper.get_config('celeb_a', 'cddpm')
