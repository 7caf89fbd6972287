"""`python -m vit_flax.export`: the `vit-flax-export` command
(`vit_flax.commands.export`)."""

from vit_flax.commands import export

if __name__ == '__main__':
  export.run()
