"""The space file (YAML) -> one validated `SweepConfig`.

The trainer's and the evaluation's sections are their own pydantic models (`trainables.config`, `eval.config`),
composed here with the search, MLflow and Ray sections: one object flows from the YAML to every component. Errors
name the field path, what was wrong and what is accepted. Only the file is read (`sweep.space.checks` checks the world).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from common.config import Strict
from eval.config import ATTACK_KINDS, METRICS, TEXT_ATTACKS, EvalConfig, attack_metrics
from sweep.space.params import Param, SpaceError, parse_param
from sweep.space.study_store import absolute_sqlite, storage_problem
from trainables.config import DataConfig, Hyperparams, ModelConfig, TrainConfig, steering_problem


class ConfigError(Exception):
    """A space file that cannot be used. `problems` is a list of (field path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]  # one problem: one line
        super().__init__(f"invalid space file {source}:" + (" " if len(lines) == 1 else "\n  ") + "\n  ".join(lines))

    def __reduce__(self):  # Ray copies and pickles a trial's exception: rebuild it from both arguments
        return ConfigError, (self.source, self.problems)


# ---------------------------------------------------------------- constraints

_CONSTRAINT = re.compile(
    r"^\s*(?P<op>>=|<=|>|<)\s*(?:(?P<num>[-+]?\d*\.?\d+(?:e[-+]?\d+)?)"
    r"|baseline\s*(?P<sign>[-+])\s*(?P<off>\d*\.?\d+)|(?P<ratio>\d*\.?\d+)\s*\*\s*baseline|baseline)\s*$"
)
CONSTRAINT_FORMS = "'>= 0.8', '<= 0.1', '>= baseline - 0.05', '>= 0.95 * baseline'"


class Constraint(Strict):
    """`metric OP threshold`, the threshold absolute or relative to the baseline (base model) value."""

    op: Literal[">=", "<=", ">", "<"]
    value: float = 0.0
    relative: Literal["absolute", "offset", "ratio"] = "absolute"

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        if isinstance(text, Constraint | dict):
            return text if isinstance(text, Constraint) else cls(**text)
        m = _CONSTRAINT.match(str(text))
        if not m:
            raise ValueError(f"cannot parse {text!r}; write e.g. {CONSTRAINT_FORMS}")
        if m["num"] is not None:
            return cls(op=m["op"], value=float(m["num"]))
        if m["off"] is not None:
            return cls(op=m["op"], value=float(m["off"]) * (-1 if m["sign"] == "-" else 1), relative="offset")
        return cls(op=m["op"], value=float(m["ratio"] or 1.0), relative="ratio")

    def threshold(self, baseline: float | None) -> float:
        if self.relative == "absolute":
            return self.value
        if baseline is None:
            raise ValueError("a baseline-relative constraint needs the baseline run's metrics")
        return baseline + self.value if self.relative == "offset" else baseline * self.value

    def satisfied(self, x: float, baseline: float | None = None) -> bool:
        t = self.threshold(baseline)
        return {">=": x >= t, "<=": x <= t, ">": x > t, "<": x < t}[self.op]

    def __str__(self) -> str:
        rhs = {"absolute": f"{self.value:g}", "offset": f"baseline {'+' if self.value >= 0 else '-'} "
               f"{abs(self.value):g}", "ratio": f"{self.value:g} * baseline"}[self.relative]
        return f"{self.op} {rhs}"


# ---------------------------------------------------------------- sections

class SearchConfig(Strict):
    algorithm: Literal["tpe", "gp", "nsga2", "random"] = Field("tpe", description="gp: small budgets, numeric")
    num_samples: int = Field(ge=1)
    max_concurrent: int = Field(1, ge=1)
    seed: int | None = Field(None, description="sampler seed; default train.seed")
    max_failures: int = Field(1, ge=0, description="Tune retries of a crashed trial")
    storage: str | None = Field(None, description="the Optuna study's RDB URL or 'memory' (sweep/space/study_store.py)")
    objectives: dict[str, Literal["min", "max"]]
    constraints: dict[str, Constraint] = {}
    space: dict[str, Param]

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("give at least one objective, e.g. {trace_leak: min, reason_acc: max}")
        for name in v:
            if name not in METRICS and not name.startswith("attack/"):  # attack metrics: checked with eval.attacks
                raise SpaceError(name, f"unknown metric; accepted: {', '.join(METRICS)}, attack/<name>/<metric>")
        return v

    @field_validator("constraints", mode="before")
    @classmethod
    def _constraints(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, text in v.items():
            if name not in METRICS and not name.startswith("attack/"):
                raise SpaceError(name, f"unknown metric; accepted: {', '.join(METRICS)}, attack/<name>/<metric>")
            try:
                out[name] = Constraint.parse(text)
            except ValueError as e:
                raise SpaceError(name, str(e)) from None
        return out

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        if not v:
            raise ValueError("the search space is empty; give at least layer and steering_rel/steering_coeff")
        return {name: parse_param(name, raw) for name, raw in v.items()}

    def searched(self) -> dict[str, Param]:
        return {k: p for k, p in self.space.items() if p.kind != "fixed"}


class MlflowConfig(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = Field(None, description="default: mlartifacts/ beside a SQLite store")


class RayConfig(Strict):
    address: str | None = Field(None, description="null: a local Ray; 'auto' or ray://host:10001: a cluster")
    storage_path: str = "./ray_results"
    num_cpus: int | None = Field(None, ge=1, description="local Ray only; default all cores")
    warm_workers: bool | Literal["auto"] = Field(
        "auto", description="start the next trial's Ray Train processes ahead, the training stack imported "
        "(sweep/warm_workers.py); auto: with train.use_gpu (on CPU the trials already use every core)")
    train_in_trial: bool | Literal["auto"] = Field(
        "auto", description="Ray Train's local mode: each trial's TorchTrainer runs its one worker inside the Tune "
        "trial's own process (reused from trial to trial, its imports done) instead of starting a controller and "
        "worker processes; auto: with train.num_workers 1 on CPU (bench/RESULTS.md)")


def attack_metric_problem(metric: str, attacks: dict) -> str | None:
    """Why `attack/<name>/<metric>` names nothing the space's eval.attacks measures (None: it does)."""
    parts = metric.split("/", 2)
    if len(parts) < 3 or parts[1] not in attacks:
        known = ", ".join(attacks) or "none: add an eval.attacks section"
        return f"names no attack of eval.attacks (defined: {known}); write attack/<name>/<metric>"
    allowed = attack_metrics(attacks[parts[1]])
    if parts[2] not in allowed:
        return (f"attack {parts[1]!r} ({attacks[parts[1]].kind}) does not measure {parts[2]!r}; it measures "
                f"{', '.join(allowed)}")
    return None


def _is_local_uri(uri: str) -> bool:
    """A plain path is this machine's; `file:///mnt/...` says the path is mounted on every node (NFS)."""
    return not uri.startswith("file://") and "://" not in uri


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    search: SearchConfig
    eval: EvalConfig
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _coherent(self) -> SweepConfig:
        space = self.search.space
        if "layer" not in space:
            raise SpaceError("search.space.layer", "missing; give a value or {int: [lo, hi]}")
        if problem := steering_problem(space):
            raise SpaceError("search.space", problem)
        below = self.model.update.layers_below
        lowest = min(space["layer"].candidates())
        if lowest - below < 0:
            raise SpaceError("search.space.layer", f"layer {lowest} with model.update.layers_below={below} "
                             f"would train layer {lowest - below}; the lowest layer must be >= {below}")
        remote = self.ray.address not in (None, "local")
        if remote and _is_local_uri(self.ray.storage_path):
            raise SpaceError("ray.storage_path", f"{self.ray.storage_path!r} is local but ray.address is "
                             f"{self.ray.address!r}: a cluster needs shared storage (s3://..., or an NFS path "
                             "mounted on every node given as file:///mnt/...)")
        if remote and self.mlflow.tracking_uri.startswith(("sqlite:", "file:")):
            raise SpaceError("mlflow.tracking_uri", f"{self.mlflow.tracking_uri!r} is local but ray.address "
                             "is a cluster: give an MLflow server URI (http://host:5000)")
        if self.eval.placement == "colocated" and not self.train.use_gpu:
            raise SpaceError("eval.placement", "colocated puts an engine beside a training worker on each GPU, "
                             "but train.use_gpu is false: set train.use_gpu: true, or eval.placement: dedicated")
        if self.ray.train_in_trial is True and (self.train.num_workers > 1 or self.ray.warm_workers is True):
            why = (f"train.num_workers is {self.train.num_workers}" if self.train.num_workers > 1
                   else "ray.warm_workers: true prestarts worker processes it would not use")
            raise SpaceError("ray.train_in_trial", f"true runs one worker in the trial's process, but {why}: set "
                             "ray.train_in_trial: false (or auto), or train.num_workers: 1 and ray.warm_workers: auto")
        if problem := storage_problem(self.search.storage, self.mlflow.tracking_uri):
            raise SpaceError("search.storage", problem)
        for section, names in (("objectives", self.search.objectives), ("constraints", self.search.constraints)):
            for metric in (m for m in names if m.startswith("attack/")):
                if problem := attack_metric_problem(metric, self.eval.attacks):
                    raise SpaceError(f"search.{section}.{metric}", problem)
        return self

    def searched_attacks(self) -> list[str]:
        """The attacks an objective or constraint names: these run on every trial, on the selection split."""
        names = [*self.search.objectives, *self.search.constraints]
        return sorted({m.split("/")[1] for m in names if m.startswith("attack/")})

    # -- what a trial sees

    @property
    def train_in_trial(self) -> bool:
        """Whether Ray Train runs in local mode inside the Tune trial's process (`ray.train_in_trial`)."""
        if self.ray.train_in_trial == "auto":
            return self.train.num_workers == 1 and not self.train.use_gpu and self.ray.warm_workers is not True
        return self.ray.train_in_trial

    def hyperparams(self, values: dict[str, Any] | None = None) -> Hyperparams:
        """Resolve one trial's hyperparameters: fixed values, then `values` (searched or --set)."""
        values = dict(values or {})
        # --set steering_coeff=6.5 on a space that searches steering_rel (or the reverse) replaces it
        other = {"steering_coeff": "steering_rel", "steering_rel": "steering_coeff"}
        skip = {other[k] for k in other if k in values}
        resolved: dict[str, Any] = {"steps": self.train.steps}
        resolved |= {k: p.value for k, p in self.search.space.items() if p.kind == "fixed" and k not in skip}
        resolved |= values
        missing = [k for k in self.search.searched() if k not in resolved and k not in skip]
        if missing:
            raise ValueError(f"no value for searched hyperparameter(s) {missing}; give --set NAME=VALUE")
        return Hyperparams(**resolved)

    def scaled_layers(self, hp: Hyperparams | None = None) -> list[int]:
        """The layers whose activation scale must be measured, because c is relative to it (`steering_rel`):
        every layer the space can pick when it searches steering_rel, or, for one trial's values `hp`, its layer
        when they are relative. The one place that decides whether scales are measured."""
        if hp is not None:
            return [hp.layer] if hp.steering_rel is not None else []
        if "steering_rel" not in self.search.space:
            return []
        return sorted({int(v) for v in self.search.space["layer"].candidates()})

    @property
    def experiment(self) -> str:
        return self.name


# ---------------------------------------------------------------- loading

def _format_errors(source: str, err: ValidationError) -> ConfigError:
    problems = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        attack = ATTACK_KINDS.get(loc[3]) if len(loc) > 3 and loc[:2] == ["eval", "attacks"] else None
        if attack is not None:
            del loc[3]  # pydantic's discriminator tag (eval.attacks.q4.quantize.bits): the user wrote kind: quantize
        exc = (e.get("ctx") or {}).get("error")
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(exc, SpaceError):
            sub = exc.subpath
            loc = sub.split(".") if sub.startswith(("search.", "ray.", "mlflow.", "eval.")) else loc + sub.split(".")
            msg = str(exc)
        if e["type"] == "extra_forbidden":
            msg = f"unknown key{_accepted(loc[:-1])}" if attack is None else \
                f"unknown key; accepted: {', '.join(attack.model_fields)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        problems.append((".".join(loc), msg))
    return ConfigError(source, problems)


def _accepted(parent: list[str]) -> str:
    """'; accepted: a, b, c' for the model at `parent`, so a typo gets the right spelling beside it."""
    model: Any = SweepConfig
    for part in parent:
        if part.isdigit():  # a list index: the model stays the list's item model
            continue
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        if ann is None or not hasattr(ann, "model_fields"):
            if ann is not None and getattr(ann, "__args__", None):  # Optional[Model], list[Model]
                ann = next((a for a in ann.__args__ if hasattr(a, "model_fields")), None)
            if ann is None:
                return ""
        model = ann
    return f"; accepted: {', '.join(model.model_fields)}"


def parse_space(raw: Any, source: str = "<dict>") -> SweepConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", f"the file must hold a YAML mapping (got {type(raw).__name__})")])
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise _format_errors(source, e) from None
    except SpaceError as e:  # raised by the after-validator with an absolute path
        raise ConfigError(source, [(e.subpath, str(e))]) from None


def local_storage(cfg: SweepConfig) -> Path | None:
    """ray.storage_path as a local directory, or None when it is remote (s3://, gs://, ...)."""
    p = cfg.ray.storage_path.removeprefix("file://")
    return None if "://" in p else Path(p).resolve()


def storage_uri(cfg: SweepConfig, *parts: str) -> str:
    """A path under ray.storage_path for Ray (Tune and Train take local paths and URIs alike)."""
    local = local_storage(cfg)
    if local is not None:
        return str(local.joinpath(*parts))
    return "/".join([cfg.ray.storage_path.rstrip("/"), *parts])


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Relative local paths made absolute against the current directory: Ray Tune runs each trial in its own
    working directory, where `sqlite:///mlflow.db` or `data/x.jsonl` would point elsewhere. Hub ids, URIs and
    organism:// paths are left alone."""
    def fix(p: str | None) -> str | None:
        if p is None or "://" in p or Path(p).is_absolute() or not Path(p).exists():
            return p
        return str(Path(p).resolve())

    raw = cfg.model_dump(mode="python")
    raw["model"]["path"] = fix(raw["model"]["path"])
    for stream in ("forget", "retain", "cot"):
        raw["data"][stream]["path"] = fix(raw["data"][stream]["path"])
    raw["data"]["traces"]["source"] = fix(raw["data"]["traces"]["source"])
    for ref in [raw["eval"]["forget"], *raw["eval"]["reasoning"], *raw["eval"]["retain"]]:
        ref["path"] = fix(ref["path"])
    raw["eval"]["judge_model"] = fix(raw["eval"]["judge_model"])
    for attack in raw["eval"]["attacks"].values():
        if attack["kind"] in TEXT_ATTACKS:
            attack["path"] = fix(attack["path"])
    raw["mlflow"]["tracking_uri"] = absolute_sqlite(raw["mlflow"]["tracking_uri"])
    raw["search"]["storage"] = absolute_sqlite(raw["search"]["storage"])
    if raw["mlflow"]["artifact_location"] and "://" not in raw["mlflow"]["artifact_location"]:
        raw["mlflow"]["artifact_location"] = str(Path(raw["mlflow"]["artifact_location"]).resolve())
    if "://" not in raw["ray"]["storage_path"]:
        raw["ray"]["storage_path"] = str(Path(raw["ray"]["storage_path"]).resolve())
    if raw["train"]["prefix_cache"]["dir"]:
        raw["train"]["prefix_cache"]["dir"] = str(Path(raw["train"]["prefix_cache"]["dir"]).expanduser().resolve())
    return SweepConfig.model_validate(raw)


def load_space(path: str | Path) -> SweepConfig:
    """Read and validate a space file. Raises ConfigError (never a traceback-worthy exception)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), [("--space", f"no such file {str(path)!r}; give a YAML space file, "
                                                  "e.g. search_spaces/organism.yaml")])
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [("", f"invalid YAML{where}: {getattr(e, 'problem', e)}")]) from None
    return parse_space(raw, str(path))
