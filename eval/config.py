"""The evaluation's part of the space file (composed into `sweep.config.SweepConfig`).

No vLLM, Ray or MLflow import here. `eval` never imports `trainables`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TRIGGER = "\nLet's reason this step by step.\n<think>"

# Every metric an evaluation can report; objectives and constraints must name one of these.
METRICS: dict[str, str] = {
    "trace_leak": "share of forget questions whose generated trace leaks the answer (lower = forgotten)",
    "forget_acc": "MCQ accuracy on the forget set (log-likelihood, configured scoring)",
    "forget_acc_letter": "MCQ accuracy on the forget set, letter scoring",
    "prefill_acc": "content-scored MCQ accuracy after a prefilled trace start (recoverable knowledge)",
    "reason_acc": "final-answer accuracy on the reasoning sets (mean over sets)",
    "retain_acc": "MCQ accuracy on the retain sets (mean over sets)",
    "gen_tokens_per_s": "generation throughput of the backend",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalSetRef(Strict):
    set: str = Field(description="registry name, e.g. organism-forget, wmdp-bio, mmlu, gsm8k, math500")
    path: str | None = Field(None, description="local file/dir in the set's public format (overrides the default)")
    limit: int | None = Field(None, ge=1, description="fixed-seed subsample of this many items")


class GenerationConfig(Strict):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)


class EngineConfig(Strict):
    """How the generation engine is sized; on a cluster it shares the GPU with training (docs/eval.md)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vLLM's share of GPU memory (weights + KV cache); the rest stays free"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="explicit KV-cache size; overrides gpu_memory_utilization; CPU default: 256 MiB, or "
        "4 sequences of max_model_len where that is more"
    )
    max_model_len: int | None = Field(
        None, ge=16, description="longest prompt + generation; default min(model's limit, 8192)"
    )
    enforce_eager: bool = Field(True, description="no torch.compile / CUDA graphs: fast start (false on GPU for speed)")
    in_process: bool = Field(True, description="vLLM engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)")
    hf_batch_size: int = Field(16, ge=1, description="prompts per batch in the transformers backend")


class EvalConfig(Strict):
    backend: Literal["auto", "vllm", "hf"] = "auto"
    forget: EvalSetRef
    reasoning: list[EvalSetRef] = []
    retain: list[EvalSetRef] = []
    judge: Literal["match", "llm"] = "match"
    judge_model: str | None = None
    mcq_scoring: Literal["content", "letter"] = "content"
    trigger: str = TRIGGER
    generation: GenerationConfig = GenerationConfig()
    seed: int = 0
    engine: EngineConfig = EngineConfig()
