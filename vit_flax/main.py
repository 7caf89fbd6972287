"""`python -m vit_flax.main`: trains and evaluates (the `vit-flax-train`
command, `vit_flax.commands.train`), as `python -m vit_jax.main` does."""

from vit_flax.commands import train

if __name__ == '__main__':
  train.run()
