"""Trains and evaluates a ViT: `python main.py --config=... --workdir=...`.

The command is `vit_flax.commands.train` (installed as `vit-flax-train`);
this file runs it from a checkout of the repository.
"""

from vit_flax.commands import train

if __name__ == '__main__':
  train.run()
