"""tfds' celeb_a prepared from files downloaded by hand, for when its Google Drive download is refused.

CelebAManual is the catalogue's celeb_a builder under the same name and version, so the prepared files land where
tfds.builder('celeb_a') reads them; only where the files come from differs: manual_dir (or the Img, Anno and Eval
sub-folders of the CelebA Google Drive folder copied into it), never the network. Examples are the parent's.
"""

from etils import epath
import tensorflow_datasets as tfds

from pdm_jax.data import datasets
from pdm_jax.data import image_ops  # pylint: disable=unused-import  (keeps TensorFlow off the GPUs)

PAGE = datasets.get_spec('celeb_a').manual_source
# The resources the catalogue's builder downloads, by the key its _split_generators asks for, and their file names
# on the CelebA page (the same as the spec's manual_files; identity_CelebA.txt since tfds added the identity feature).
FILES = {
    'img_align_celeba': 'img_align_celeba.zip',
    'list_eval_partition': 'list_eval_partition.txt',
    'list_attr_celeba': 'list_attr_celeba.txt',
    'landmarks_celeba': 'list_landmarks_align_celeba.txt',
    'identity_celeba': 'identity_CelebA.txt',
}
# Where the CelebA Google Drive folder keeps them, so a copy of that folder works as it is.
SUBFOLDERS = ('', 'Img', 'Anno', 'Eval')

_CatalogueCelebA = tfds.builder_cls('celeb_a')


def find_files(manual_dir, names) -> dict[str, epath.Path]:
  """{file name: path} of names in manual_dir or its Img/Anno/Eval sub-folders; a one-line ValueError naming the
  missing ones and where to get them."""
  folder = epath.Path(manual_dir)
  found, missing = {}, []
  for name in names:
    candidates = [folder / sub / name if sub else folder / name for sub in SUBFOLDERS]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
      missing.append(name)
    else:
      found[name] = path
  if missing:
    raise ValueError(f'--manual_dir={manual_dir} lacks {", ".join(missing)}: download them from {PAGE} (its Google '
                     'Drive folder: Img/img_align_celeba.zip, kept zipped; Anno/*.txt; Eval/list_eval_partition.txt) '
                     'into that folder or its Img, Anno and Eval sub-folders.')
  return found


class _ManualFiles:
  """A download manager whose download() hands out the files in manual_dir; everything else is the real one's."""

  def __init__(self, dl_manager: tfds.download.DownloadManager, manual_dir: epath.Path):
    self._dl_manager = dl_manager
    self._manual_dir = manual_dir

  def download(self, urls: dict[str, str]) -> dict[str, epath.Path]:
    unknown = sorted(set(urls) - set(FILES))
    if unknown:  # a tfds release asking for a resource this module does not know: say so rather than guess
      raise ValueError(f'this tfds celeb_a builder asks for {", ".join(unknown)}, unknown to '
                       f'pdm_jax/data/celeba_manual.py: add its file name to FILES there.')
    found = find_files(self._manual_dir, [FILES[key] for key in urls])
    return {key: found[FILES[key]] for key in urls}

  def __getattr__(self, name):
    return getattr(self._dl_manager, name)


class CelebAManual(_CatalogueCelebA, skip_registration=True):
  """tfds celeb_a (same name, version and features) read from manual_dir instead of Google Drive."""

  name = 'celeb_a'
  # The parent's README and citation describe the data; this file is the code (tfds would otherwise look both up
  # through importlib_resources, which recent etils no longer installs).
  pkg_dir_path = _CatalogueCelebA._get_pkg_dir_path()  # pylint: disable=protected-access
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {", ".join(FILES.values())} (from {PAGE}) in manual_dir, or a copy of its Google Drive folder.')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # tfds' way of saying manual_dir is unset, missing or empty
      raise ValueError(f'celeb_a from files downloaded by hand needs --manual_dir=FOLDER holding '
                       f'{", ".join(FILES.values())} (from {PAGE}).') from None
    # Checked up front so one message names every missing file before the 1.4 GB archive is opened.
    find_files(manual_dir, FILES.values())
    return super()._split_generators(_ManualFiles(dl_manager, manual_dir))
