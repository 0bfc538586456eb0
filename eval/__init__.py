"""What judges a model: generation backends, eval sets, metrics, leakage judges (`python -m eval.suite`)."""

from eval.telemetry import telemetry_off

telemetry_off()  # before MLflow, vLLM or the HF hub is imported: they read their switches at import
