"""Usage statistics and telemetry of the libraries this project runs are off unless the user turns them on.

`telemetry_off()` runs when the `eval` package is imported (and so for every `sweep` entry point too, which
imports it first): before MLflow, vLLM or the HF hub are imported, because MLflow decides at `import mlflow`
whether to start its telemetry client and the HF hub reads its switch at import. It only sets a variable
the user has not set: `VLLM_NO_USAGE_STATS=0 python -m sweep.run ...` keeps vLLM's statistics on.
The sweep also hands these values to its Ray workers and actors (`sweep/ray_start.py`). `trainables`
(which may not import `eval`) keeps a copy of the table; a test checks the two are the same.
See docs/security.md.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF = {
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray: the cluster's usage report to usage-stats.ray.io
    "VLLM_NO_USAGE_STATS": "1",  # vLLM: the engine's usage report to stats.vllm.ai
    "DO_NOT_TRACK": "1",  # vLLM and the HF hub honour "1"; MLflow only "true", hence its own switch below
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub / transformers / datasets: telemetry pings, user agent
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3.x: its telemetry client (config + event upload)
}


def telemetry_off(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each switch the user has not set; return the values now in force (what workers should get)."""
    for k, v in TELEMETRY_OFF.items():
        env.setdefault(k, v)
    return {k: env[k] for k in TELEMETRY_OFF}
