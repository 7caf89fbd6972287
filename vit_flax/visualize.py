"""`python -m vit_flax.visualize`: the `vit-flax-visualize` command
(`vit_flax.commands.visualize`)."""

from vit_flax.commands import cli

if __name__ == '__main__':
  cli.visualize()
