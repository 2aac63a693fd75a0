"""Training: a model-agnostic trainer, optimizers and schedules."""
