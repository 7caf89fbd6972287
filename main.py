"""Trains and evaluates a ViT: `python main.py --config=... --workdir=...`.

The command is `vit_flax.main` (installed as `vit-flax-train`); this file
runs it from a checkout of the repository.
"""

from vit_flax import main

if __name__ == '__main__':
  main.run()
