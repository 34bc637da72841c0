"""Training: Ray Train's TorchTrainer runs the mmengine Runner on every worker."""
