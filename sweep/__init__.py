"""The sweep's driver. Importing it turns usage statistics off first (eval/telemetry.py, docs/security.md)."""

from eval.telemetry import telemetry_off

telemetry_off()  # before any sweep module imports MLflow, Ray or vLLM
