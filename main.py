"""pdm-jax command line: python main.py --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval|inspect].

Any config field can be overridden, e.g. --config.train.num_steps=100 --config.sample.method=ddim.
"""

from pdm_jax import cli

if __name__ == '__main__':
  cli.main()
