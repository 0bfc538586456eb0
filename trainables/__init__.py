"""What runs inside a trial: the R²MU objective, its data streams, delta checkpoints, the trainer."""
