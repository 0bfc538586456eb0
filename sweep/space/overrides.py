"""The command line's changes to a space file, for `sweep.run`; `FlagError` for a flag that cannot be used.

`--set PATH=VALUE` (repeatable) sets one field by its dotted path:

    --set train.steps=10  --set search.space.layer=3  --set "search.space.lr={loguniform: [1e-4, 1e-3]}"
    --set eval.retain.0.limit=32  --set mlflow.tracking_uri=http://127.0.0.1:5000  --set eval.judge_model=null

The value is read as YAML (with `1e-3` a number, as YAML 1.2 reads it). A path that names no field is refused
here, with the keys accepted at that level. $MLFLOW_TRACKING_URI (where the file leaves the default store),
`--address`, `--num-samples` and the `--set`s go into the file's own mapping, which is then validated once as
the file is: a bad value gets the file's error naming the field.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from sweep.mlflow_store import DEFAULT_URI, space_uri
from sweep.space.config import SweepConfig, load_space, parse_space


class FlagError(ValueError):
    """A command-line value that cannot be used; printed as one line `FLAG: what is wrong and the fix`."""

    def __init__(self, flag: str, msg: str):
        self.flag = flag
        super().__init__(f"{flag}: {msg}")


class _Loader(yaml.SafeLoader):
    """YAML, with `1e-3` a number as in YAML 1.2 (PyYAML's YAML 1.1 reads an exponent without a dot as a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def parse_value(flag: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise FlagError(flag, f"{text!r} is not a YAML value ({getattr(e, 'problem', e)}); quote the whole "
                        "--set, e.g. --set \"search.space.lr={loguniform: [1e-4, 1e-3]}\"") from None


def parse_overrides(pairs: Sequence[str]) -> list[tuple[str, Any]]:
    """`PATH=VALUE` strings -> (dotted path, value)."""
    out = []
    for pair in pairs:
        path, eq, text = pair.partition("=")
        path = path.strip()
        if not eq or not path or any(not p for p in path.split(".")):
            raise FlagError("--set", f"{pair!r}: write PATH=VALUE with a dotted path into the space file, e.g. "
                            "--set train.steps=10")
        out.append((path, parse_value(f"--set {path}", text)))
    return out


def _unwrap(ann: Any, node: Any = None) -> Any:
    """`X | None` -> X where X is a section (a model, a dict or a list); a leaf type stays as it is. A union of
    models told apart by `kind` (an attack) -> the member whose `kind` the current value has."""
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    members = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union else ()
    kind = node.get("kind") if isinstance(node, dict) else None
    chosen = [m for m in members if _is_model(m) and "kind" in m.model_fields
              and kind in typing.get_args(m.model_fields["kind"].annotation)]
    if len(chosen) == 1:
        return chosen[0]
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        sections = [a for a in inner if _is_model(a) or typing.get_origin(a) in (dict, list, tuple)]
        return sections[0] if sections else ann
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def set_path(raw: dict, path: str, value: Any, model: type[BaseModel] = SweepConfig) -> None:
    """Put `value` at the dotted `path` of `raw` (a dump of `model`); FlagError for a path that names no field."""
    flag = f"--set {path}"
    parts = path.split(".")
    node: Any = raw
    ann: Any = model
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the top level"
        ann = _unwrap(ann, node)
        origin = typing.get_origin(ann)
        if _is_model(ann):
            if part not in ann.model_fields:
                raise FlagError(flag, f"unknown key {part!r} at {here}; accepted: {', '.join(ann.model_fields)}")
            key: Any = part
            ann = ann.model_fields[part].annotation
        elif origin is dict:  # a free-form mapping (search.space, objectives, constraints): any key
            key, ann = part, typing.get_args(ann)[1]
        elif origin is list:
            size = len(node)
            if not part.isdigit() or int(part) >= size:
                raise FlagError(flag, f"{here} is a list of {size}: give an index 0..{size - 1}" if size else
                                f"{here} is an empty list: set the whole list, e.g. --set '{here}=[...]'")
            key, ann = int(part), typing.get_args(ann)[0]
        else:
            raise FlagError(flag, f"{here} is a value, not a section; write --set {here}=VALUE")
        if i == len(parts) - 1:
            node[key] = value
            return
        if isinstance(node, dict) and not isinstance(node.get(key), dict | list):
            node[key] = {}  # an absent or null section (a new search.space entry, an unset optional section)
        node = node[key]


def read_mapping(path: str | Path) -> dict | None:
    """The space file's YAML mapping, unvalidated; None when it is not one (`load_space` then says why)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def load_with_overrides(space: str, address: str | None = None, num_samples: int | None = None,
                        sets: Sequence[str] = ()) -> SweepConfig:
    """The space file with the command line's overrides, validated once, as the file is: an override may fix
    what the file alone is refused for (`--address auto` with $MLFLOW_TRACKING_URI naming a server)."""
    raw = read_mapping(space)
    if raw is None:
        return load_space(space)  # raises the file's own error: no file, bad YAML, not a mapping
    return with_overrides(raw, space, address, num_samples, sets)


def with_overrides(raw: dict, space: str, address: str | None = None, num_samples: int | None = None,
                   sets: Sequence[str] = ()) -> SweepConfig:
    """$MLFLOW_TRACKING_URI where the file leaves the default store, then --address, --num-samples and each
    --set PATH=VALUE, into the file's mapping; then the file's validation. Errors name what was applied."""
    applied = []
    mlflow = raw.setdefault("mlflow", {})
    if isinstance(mlflow, dict) and space_uri(uri := mlflow.get("tracking_uri", DEFAULT_URI)) != uri:
        mlflow["tracking_uri"] = space_uri(uri)
        applied.append("$MLFLOW_TRACKING_URI")
    changes = [("ray.address", address, "--address")] if address else []
    if num_samples is not None:
        changes.append(("search.num_samples", num_samples, "--num-samples"))
    changes += [(path, value, f"--set {path}") for path, value in parse_overrides(sets)]
    for path, value, flag in changes:
        set_path(raw, path, value, SweepConfig)
        applied.append(flag)
    return parse_space(raw, space + (f" (with {', '.join(applied)})" if applied else ""))
