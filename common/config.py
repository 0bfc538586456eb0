"""The one base class of every config section, so the trainer's, the evaluation's and the driver's agree."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors (a typo in the space file must not be silently ignored); a config is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
