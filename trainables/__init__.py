"""What runs inside a trial: the R²MU objective, its data streams, delta checkpoints, the trainer."""

import os

# eval/telemetry.py's table (trainables may not import eval; tests/sweep/test_local_only.py checks they match):
# usage statistics stay off unless the user set the variable (docs/security.md)
TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                 "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
for _k, _v in TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)
del _k, _v
