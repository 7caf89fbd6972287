"""The quickstart's ViT with the data-efficient recipe (DeiT-style).

configs/quickstart_patchify.py (the first quickstart) plus RandAugment (2 ops, magnitude 9), random erasing
0.25 (instead of 0.5), stochastic depth 0.1 and an EMA of the weights
(decay 0.999), trained 7,000 steps (30 epochs) to fill the quickstart's
15-minute budget on 2 CPU cores. docs/experiments.md has what it reached;
docs/recipe.md what each ingredient is worth at equal wall clock.

python main.py --config=configs/quickstart_recipe.py --workdir=/tmp/recipe
"""

from vit_flax.configs import quickstart_patchify


def get_config():
  config = quickstart_patchify.get_config()
  with config.unlocked():
    config.pp.randaugment = (2, 9)
    config.pp.random_erase = 0.25
    config.model.model_name = 'quickstart_recipe'
    config.model.transformer.stochastic_depth = 0.1
    # Evaluated and exported: an average over the last ~1,000 steps.
    config.ema_decay = 0.999
    config.total_steps = 7_000
    config.warmup_steps = 500
    config.eval_every = 1_750
    config.checkpoint_every = 1_750
  return config.lock()
