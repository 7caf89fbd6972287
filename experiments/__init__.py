"""Commands that train and compare models: `python -m experiments.<study>`.

Each study (`curriculum`, `locality`, `patch_size`, `recipe`, `staged_vs_tower`,
`vit_vs_resnet`) declares its options, variants, budgets and report as a
`study.Study`, which runs them all the same way. The shared pieces:
`study` (the flow), `cli` (options as --flags and back), `budget` (fitting
a config to a step or wall-clock budget), `runs` (training and measuring
one run) and `report` (tables, notes and curves).
"""
