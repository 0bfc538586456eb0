"""The trainer's part of the space file, as validated pydantic models.

`sweep.space.config.SweepConfig` composes these sections, so the one object that the YAML becomes is what the
trainer receives (`TrialSpec` bundles it with one trial's resolved hyperparameters). No Ray, DeepSpeed or
MLflow import here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from common.config import Strict
from common.prompts import TRIGGER


class UpdateConfig(Strict):
    layers_below: int = Field(2, ge=0, description="train layers l-layers_below .. l")
    param: str = Field("mlp.down_proj.weight", description="parameter name inside a decoder layer")


class ModelConfig(Strict):
    path: str = Field(description="HF directory, hub id (cluster only), or organism://base")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    update: UpdateConfig = UpdateConfig()
    trust_remote_code: bool = False

    def param_names(self, layer: int) -> list[str]:
        """Full names of the updated tensors for steering layer `layer` (by name, never by index)."""
        first = layer - self.update.layers_below
        return [f"model.layers.{i}.{self.update.param}" for i in range(first, layer + 1)]


class CorpusConfig(Strict):
    path: str
    field: str = "text"
    limit: int | None = Field(None, ge=1, description="use at most this many records")


class CotConfig(CorpusConfig):
    max_tokens: int = Field(150, ge=1, description="cut each CoT text to this many tokens")


class TracesConfig(Strict):
    """The unthink stream: how the base model's traces are generated, and what the loss sees of them.

    Two forms (trainables/README.md, "The unthink input"). The default, ours: traces on the chat-rendered
    question + trigger, and the unthink input is that rendered prompt + the first k trace tokens. The
    reference code's: traces on the plain forget document + trigger (`template: none`, `prompt_tokens: 512`),
    and the unthink input is only the trigger + the first k trace tokens (`input: reference`).
    """

    source: str | None = Field(None, description="questions or documents to generate traces on; default: "
                               "data.forget")
    field: str = "text"
    trigger: str = TRIGGER
    max_new_tokens: int = Field(100, ge=1, description="k: trace tokens kept for the unthink stream")
    template: Literal["chat", "none"] = Field(
        "chat", description="trace generation prompt: chat = the chat template around the body (where the "
        "tokenizer has one), then the trigger; none = body + trigger as plain text, no template (the reference)"
    )
    prompt_tokens: int | None = Field(
        None, ge=1, description="cut the body to its first N tokens (as the tokenizer counts them with special "
        "tokens, then decoded) before the trigger is appended; the reference: 512; default: no cut"
    )
    input: Literal["prompt", "reference"] = Field(
        "prompt", description="unthink input: prompt = the rendered prompt (incl. template and trigger) + first k "
        "trace tokens; reference = the trigger (leading newlines dropped, special tokens as the tokenizer adds "
        "them to plain text) + first k tokens of the stripped trace: no question, no template (the reference code)"
    )
    scope: Literal["all", "after_trigger"] = Field(
        "all", description="unthink loss over the whole unthink input, or (input: prompt only) from the trigger on"
    )
    limit: int | None = Field(None, ge=1)

    @field_validator("scope")
    @classmethod
    def _scope_fits_input(cls, v: str, info: ValidationInfo) -> str:
        if v == "after_trigger" and info.data.get("input") == "reference":
            raise ValueError("after_trigger has no meaning with data.traces.input: reference (that input starts "
                             "at the trigger and holds no question); use scope: all, or input: prompt")
        return v


class DataConfig(Strict):
    forget: CorpusConfig
    retain: CorpusConfig
    cot: CotConfig
    traces: TracesConfig = TracesConfig()
    max_len: int = Field(256, ge=8)
    skip_first_position: bool = Field(
        False, description="leave each row's first position (BOS where the tokenizer adds one) out of the forget "
        "and unthink loss masks; the forward pass still sees it, retain and cot are unchanged. Its hidden state "
        "is the same for every input and can dominate the forget term (trainables/README.md)"
    )


class DeepSpeedConfig(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0


class PrefixCacheConfig(Strict):
    enabled: bool = Field(False, description="keep each step's no-grad work (prefix, frozen targets) across the "
                          "trials at one layer (trainables/prefix_cache.py)")
    dir: str | None = Field(None, description="a node-local directory; default: <storage>/cache/prefix for a "
                            "plain local ray.storage_path, else $R2MU_CACHE/prefix or ~/.cache/r2mu-sweep/prefix "
                            "on each training node")
    max_gb: float = Field(64.0, gt=0, description="disk budget; least recently used layers are evicted")

    def root(self) -> str:
        if self.dir:
            return self.dir
        base = os.environ.get("R2MU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "r2mu-sweep")
        return os.path.join(base, "prefix")


class TrainConfig(Strict):
    steps: int = Field(60, ge=1)
    batch_size: int = Field(4, ge=1)
    seed: int = 42
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    compile: bool = Field(False, description="torch.compile each decoder layer 0..l (GPU: ~1.5x faster steps; "
                          "costs a compile per trial, so leave it off for tiny CPU models)")
    prefix_cache: PrefixCacheConfig = PrefixCacheConfig()


STEERING = ("steering_coeff", "steering_rel")


def steering_problem(given: Iterable[str]) -> str | None:
    """None when exactly one way of giving c is among the names `given`; else the fix. The one rule, for a
    trial's values (`Hyperparams`) and for a search space (sweep/space/config.py)."""
    names = set(given)
    if sum(name in names for name in STEERING) != 1:
        return ("give exactly one of steering_coeff (absolute c) or steering_rel (c relative to the median "
                "activation norm at the layer)")
    return None


class Hyperparams(Strict):
    """One trial's resolved values (what the search proposes, or `sweep.single_trial --set` fixes)."""

    layer: int = Field(ge=0)
    steering_coeff: float | None = Field(None, gt=0, description="absolute c")
    steering_rel: float | None = Field(None, gt=0, description="c = steering_rel x median ||h_l||")
    alpha: float = Field(1.4, ge=0)
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    lr: float = Field(7.5e-5, gt=0)
    steps: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _one_steering(self) -> Hyperparams:
        if problem := steering_problem(n for n in STEERING if getattr(self, n) is not None):
            raise ValueError(problem)
        return self


class TrackingTarget(Strict):
    """Where rank 0 streams the loss curves while it trains (trainables/curves.py): the trial's MLflow run."""

    uri: str = Field(description="MLflow tracking URI")
    run_id: str = Field(description="the trial's MLflow run (it exists and is active)")
    every: int = Field(10, ge=1, description="send the buffered rows every N steps (and once at the end)")


class TrialSpec(Strict):
    """Everything one trial's trainer needs: the validated sections plus resolved paths and values."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    hparams: Hyperparams
    traces_path: str | None = Field(None, description="trace cache jsonl (id, prompt, rendered, trace)")
    out_dir: str = Field(description="where the delta checkpoint is written")
    activation_scale: float | None = Field(
        None, gt=0, description="median ||h_l|| of the base model on forget data at hparams.layer (the sweep "
        "measures it once per model and layer); None: the trainer measures it on a few forget batches"
    )
    tracking: TrackingTarget | None = Field(
        None, description="stream the per-step loss terms to this MLflow run while training; None: only the "
        "history at the end (history.jsonl beside the delta)"
    )
