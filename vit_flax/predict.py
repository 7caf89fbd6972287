"""`python -m vit_flax.predict`: the `vit-flax-predict` command
(`vit_flax.commands.predict`)."""

from vit_flax.commands import cli

if __name__ == '__main__':
  cli.predict()
