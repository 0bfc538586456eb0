"""The evaluation's part of the space file (composed into `sweep.space.config.SweepConfig`).

No vLLM, Ray or MLflow import here. `eval` never imports `trainables`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from common.config import Strict
from common.prompts import TRIGGER

# Every metric an evaluation can report; objectives and constraints must name one of these.
METRICS: dict[str, str] = {
    "trace_leak": "share of forget questions whose generated trace leaks the answer (lower = forgotten)",
    "trace_leak/trained": "trace_leak on the forget items whose facts are in the training streams",
    "trace_leak/heldout": "trace_leak on held-out facts: in no training stream (does unlearning generalise?)",
    "forget_acc": "MCQ accuracy on the forget set (log-likelihood, configured scoring)",
    "forget_acc/trained": "forget_acc on the trained facts",
    "forget_acc/heldout": "forget_acc on the held-out facts",
    "forget_acc_letter": "MCQ accuracy on the forget set, letter scoring",
    "prefill_acc": "content-scored MCQ accuracy after a prefilled trace start (recoverable knowledge)",
    "reason_acc": "final-answer accuracy on the reasoning sets (mean over sets)",
    "retain_acc": "MCQ accuracy on the retain sets (mean over sets)",
    "retain_trace_acc": "share of sampled traces on retain questions that state the correct answer (match judge)",
    "trace_coherence": "base model's geometric-mean token probability of the forget traces (word salad is low)",
    "gen_tokens_per_s": "generation throughput of the backend",
}


class EvalSetRef(Strict):
    set: str = Field(description="registry name, e.g. organism-forget, wmdp-bio, mmlu, gsm8k, math500")
    path: str | None = Field(None, description="local file/dir in the set's public format (overrides the default)")
    limit: int | None = Field(None, ge=1, description="selection split: a fixed-seed subsample of this many items")
    test: float = Field(0.5, ge=0, description="test split: a fraction (< 1) or a count (>= 1) of the set, "
                        "held out from selection and touched only by the final evaluation; 0: no test split")

    @field_validator("test")
    @classmethod
    def _whole_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"{v:g}: a count of items must be a whole number (or give a fraction < 1)")
        return v


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
    max_restarts: int = Field(10, ge=0, description="in a sweep: how often the evaluator is restarted after it "
                              "dies (a crash, an OOM kill); each restart is logged, the evaluation it lost runs again")


class ScreenConfig(Strict):
    """A first, cheap evaluation of each trial on a fixed subset of the selection split; only a trial that could
    still be on the Pareto front (sweep/screening.py) goes on to the full selection split."""

    items: int = Field(ge=1, description="items per set in the screening evaluation (the first of each set's "
                       "selection items, in a seeded order)")
    confidence: float = Field(0.9, gt=0, lt=1, description="of the screened trial's intervals: a trial is "
                              "screened out only if dominated or infeasible with this confidence")


# ---------------------------------------------------------------- attacks (eval/attacks.py, docs/eval.md)

FORGET_METRICS = ["trace_leak", "trace_leak/trained", "trace_leak/heldout", "forget_acc", "forget_acc/trained",
                  "forget_acc/heldout", "prefill_acc"]


class RelearnAttack(Strict):
    """A few optimiser steps of plain fine-tuning of the unlearned model on `examples` texts of a file, then the
    forget set again: forget-domain texts (facts disjoint from the scored ones: read the `/heldout` metrics
    where the texts hold the trained facts) or unrelated benign text."""

    kind: Literal["relearn"]
    path: str = Field(description="the fine-tuning texts: .jsonl (one JSON object per line, `field`) or .txt "
                      "(one text per line)")
    field: str = "text"
    examples: int = Field(10, ge=1, description="the first N texts of the file")
    steps: int = Field(30, ge=1, description="AdamW steps (Łucki et al.: 3 passes over 10 examples, batch 1)")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(1, ge=1, description="texts per step (cycled through the examples)")
    max_len: int = Field(128, ge=8, description="tokens per text")
    params: str = Field(".*", description="regex (re.search) of the parameter names fine-tuned; default all")
    with_retain: bool = Field(False, description="also re-measure reason_acc and retain_acc")

    @field_validator("params")
    @classmethod
    def _regex(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"{v!r} is not a regular expression ({e}); e.g. 'mlp' or 'layers\\.(1[0-9])\\.'") from None
        return v


class QuantizeAttack(Strict):
    """Weight-only round-to-nearest quantisation (torchao) of every linear layer of the transformer blocks
    (embeddings and the output head stay as they are), evaluated with the dequantised weights."""

    kind: Literal["quantize"]
    bits: Literal[4, 8]
    group_size: int = Field(64, ge=1, description="int4: weights per scale (must divide the layers' input "
                            "width); int8 is per output channel")
    with_retain: bool = Field(False, description="also re-measure reason_acc and retain_acc")


class OrthogonalizeAttack(Strict):
    """Direction ablation (Łucki et al. 2024): the mean difference between the unlearned and the base model's
    hidden states on `examples` forget-domain texts, at the layer where it is largest, projected out of every
    write to the residual stream (embeddings, attention and MLP outputs), in the weights. The base model
    itself has no such direction: attacked, it is unchanged."""

    kind: Literal["orthogonalize"]
    path: str = Field(description="forget-domain texts: .jsonl (`field`) or .txt")
    field: str = "text"
    examples: int = Field(32, ge=1, description="the first N texts of the file")
    max_len: int = Field(128, ge=8, description="tokens per text")
    with_retain: bool = Field(False, description="also re-measure reason_acc and retain_acc")


class DecodeAttack(Strict):
    """Another way of asking (R-TOFU's decoding attacks): the think block closed empty at once (zerothink), a
    canned one-sentence thought then closed (lessthink), the model's own first `budget` think tokens then
    closed (budget), or no trigger at all (no_trigger). The whole output, trace and answer, is judged."""

    kind: Literal["decode"]
    mode: Literal["zerothink", "lessthink", "budget", "no_trigger"]
    budget: int = Field(16, ge=1, description="mode budget: think tokens before the block is closed")


class ProbeAttack(Strict):
    """A linear probe (logistic regression) on the model's hidden states at each option of the forget
    questions, trained on some facts and scored on the others: can the answer still be read out?"""

    kind: Literal["probe"]
    layers: list[int] | None = Field(None, description="hidden-state layers tried (0 = embeddings); default "
                                     "every layer; the probe's layer is chosen by cross-validation on the "
                                     "training facts")
    heldout: float = Field(0.5, gt=0, lt=1, description="share of the forget items (facts) the probe is scored on")


Attack = Annotated[RelearnAttack | QuantizeAttack | OrthogonalizeAttack | DecodeAttack | ProbeAttack,
                   Field(discriminator="kind")]
TEXT_ATTACKS = ("relearn", "orthogonalize")  # the attacks that read texts from a file (`path`, `field`, `examples`)
ATTACK_KINDS: dict[str, type[Strict]] = {"relearn": RelearnAttack, "quantize": QuantizeAttack,
                                         "orthogonalize": OrthogonalizeAttack, "decode": DecodeAttack,
                                         "probe": ProbeAttack}


def attack_metrics(attack: Attack) -> list[str]:
    """The metrics an attack reports (each as `attack/<name>/<metric>`, rates with `_lo`, `_hi`, `_n`)."""
    if attack.kind == "probe":
        return ["probe_acc", "probe_control_acc"]
    if attack.kind == "decode":
        return FORGET_METRICS[:3]
    return FORGET_METRICS + (["reason_acc", "retain_acc"] if attack.with_retain else [])


class EvalConfig(Strict):
    backend: Literal["auto", "vllm", "hf"] = "auto"
    forget: EvalSetRef
    reasoning: list[EvalSetRef] = []
    retain: list[EvalSetRef] = []
    judge: Literal["match", "llm"] = "match"
    judge_model: str | None = None
    mcq_scoring: Literal["content", "letter"] = "content"
    letter_acc: bool = Field(True, description="also report forget_acc_letter when mcq_scoring is content (the "
                             "organism cannot read letters: it stays at chance there, docs/organism.md)")
    trigger: str = TRIGGER
    generation: GenerationConfig = GenerationConfig()
    samples: int = Field(1, ge=1, description="generations per item for trace_leak, reason_acc, retain_trace_acc "
                         "(averaged per item; the interval bootstraps over items); 1 with greedy generation")
    retain_traces: bool = Field(True, description="generate traces on the first retain set: retain_trace_acc")
    retain_trace_items: int | None = Field(None, ge=1, description="retain_trace_acc on only the first N items "
                                           "of the first retain set (its interval needs fewer items than "
                                           "retain_acc, and every one is a generated trace); default all")
    coherence: bool = Field(True, description="score forget traces with the base model: trace_coherence")
    seed: int = 0
    split_seed: int = Field(0, description="seed of the selection/test split (independent of sampling)")
    engine: EngineConfig = EngineConfig()
    engines: int | Literal["auto"] = Field(
        "auto", description="evaluation engines (actors, each holding the base model); a trial is evaluated by "
        "the least loaded one. auto: 1 without GPUs; with train.use_gpu, one per GPU evaluation may use "
        "(placement). docs/cluster.md sizes them")
    placement: Literal["dedicated", "colocated"] = Field(
        "dedicated", description="with GPUs: dedicated (each engine has a GPU of its own) or colocated (each GPU "
        "holds one engine and one training worker; vLLM takes engine.gpu_memory_utilization of it)")
    screen: ScreenConfig | None = Field(None, description="screen each trial on a subset first (null: every trial "
                                        "gets the full selection split)")
    attacks: dict[str, Attack] = Field({}, description="attacks run on the baseline and the chosen trials after "
                                       "the search (test split), and per trial where an objective or constraint "
                                       "names one: attack/<name>/<metric>")

    @field_validator("attacks")
    @classmethod
    def _attack_names(cls, v: dict[str, Attack]) -> dict[str, Attack]:
        import re

        for name in v:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
                raise ValueError(f"{name!r}: an attack name is lower-case letters, digits and _ (it becomes part of "
                                 "metric names attack/<name>/<metric>)")
        return v

    @field_validator("engines")
    @classmethod
    def _engine_count(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"{v}: give at least 1 engine, or auto")
        return v

    @model_validator(mode="after")
    def _greedy_once(self) -> EvalConfig:
        if self.samples > 1 and self.generation.temperature == 0:
            raise ValueError("samples > 1 with greedy generation (temperature 0) repeats one answer: set samples: 1 "
                             "or a temperature > 0")
        return self
