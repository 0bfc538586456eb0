"""Checks of a model against the trainer's config, and the error types every trainer module raises.

Pure torch + transformers: the sweep's dry-run calls `check_model_against_config` on a model built on the
meta device (or on a bare HF config) before Ray starts, so a bad layer or parameter name is refused in
seconds, with the field path and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from trainables.config import ModelConfig

# Architectures whose decoder stack the fast step runs by hand (embed -> layers with rotary + causal mask).
# llama and qwen2 are tested against the naive objective; the others share the exact same layout.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class TrainerConfigError(ValueError):
    """A config value that does not fit the model (layer out of range, unknown parameter name, ...)."""


class DataError(ValueError):
    """A data file that is missing, empty, or lacks the configured field."""


def _as_model(model_or_config: torch.nn.Module | PretrainedConfig) -> torch.nn.Module:
    if isinstance(model_or_config, PretrainedConfig):
        with torch.device("meta"):  # no memory, no weights: names and shapes only
            return AutoModelForCausalLM.from_config(model_or_config)
    return model_or_config


def check_model_against_config(
    model_or_config: torch.nn.Module | PretrainedConfig, model_cfg: ModelConfig, layers: Iterable[int]
) -> None:
    """Raise `TrainerConfigError` naming the field if any steering layer or updated parameter is invalid."""
    model = _as_model(model_or_config)
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise TrainerConfigError(
            f"model.path: architecture {config.model_type!r} is not supported by the trainer's hand-run "
            f"layers; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    n = config.num_hidden_layers
    below = model_cfg.update.layers_below
    params = dict(model.named_parameters())
    for layer in layers:
        if not 0 <= layer < n:
            raise TrainerConfigError(
                f"hparams.layer: {layer} is out of range for this model (num_hidden_layers={n}; use 0..{n - 1})"
            )
        if layer - below < 0:
            raise TrainerConfigError(
                f"hparams.layer: {layer} with model.update.layers_below={below} would update layer "
                f"{layer - below}; use layer >= {below} or a smaller layers_below"
            )
        for name in model_cfg.param_names(layer):
            if name not in params:
                prefix = name.rsplit(".", len(model_cfg.update.param.split(".")))[0]  # model.layers.{i}
                block = model.get_submodule(prefix)
                there = ", ".join(k for k, _ in block.named_parameters())
                raise TrainerConfigError(
                    f"model.update.param: {model_cfg.update.param!r} is not a parameter of {prefix} "
                    f"({type(block).__name__}); parameters there: {there}"
                )
