"""Training: the loop, the jitted step, the device mesh, checkpoints and
resume, optimisers, distillation, metrics, config checks, the workdir lock,
and host / multi-process set-up."""
