"""pdm-jax command line: python main.py --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval|inspect].

Any config field can be overridden, e.g. --config.train.num_steps=100 --config.sample.method=ddim.
"""

from pdm_jax import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # before jax loads: glibc reads its tunables only at start

from pdm_jax import cli  # pylint: disable=g-import-not-at-top,g-bad-import-order

if __name__ == '__main__':
  cli.main()
