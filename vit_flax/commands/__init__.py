"""The console commands (train, export, predict, visualize) and what they
share: flag and config handling, loading a model for inference."""
