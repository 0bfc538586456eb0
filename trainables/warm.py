"""The worker-process hook that imports the training stack before a trial needs it (sweep/warm_workers.py).

Ray runs `preload` in every worker process of the sweep's job as it starts. It does nothing unless the process
was started for a Ray Train worker (`R2MU_PRELOAD=train`, set through the trial's `worker_runtime_env`): then it
imports torch, DeepSpeed, transformers and the trainer, which a training worker would otherwise import on the
trial's critical path (~5-15 s here, bench/RESULTS.md). A process prestarted for the next trial does this
while the current trials train.
"""

from __future__ import annotations

import os
import time

PRELOAD_VAR = "R2MU_PRELOAD"
WARM_SINCE_VAR = "R2MU_WARM_SINCE"  # set when the imports are done: the trainer reports a warm start


def preload() -> None:
    """Imports what the process's role needs (a training worker, a Train controller); nothing otherwise."""
    if os.environ.get(PRELOAD_VAR) != "train":
        # Ray Train sets this variable in its controller (and workers) only: a prestarted controller process
        # imports what unpickling the controller and the torch backend config would import on the critical path
        # (torch is left to the controller itself: its placement-group cleaner, which takes the other process
        # prestarted in this env, never needs it)
        if "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC" in os.environ:
            import ray.train.v2._internal.execution.controller.controller  # noqa: F401
        return
    import deepspeed  # noqa: F401
    import ray.train.torch  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    # what trainables.trainer imports (not the trainer itself, which reads WARM_SINCE_VAR from here)
    import trainables.data  # noqa: F401
    import trainables.delta  # noqa: F401
    import trainables.prefix_cache  # noqa: F401
    import trainables.r2mu  # noqa: F401
    import trainables.step  # noqa: F401

    os.environ[WARM_SINCE_VAR] = str(time.time())
