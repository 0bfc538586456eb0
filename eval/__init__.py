"""What judges a model: generation backends, eval sets, metrics, leakage judges (`python -m eval.run`)."""
