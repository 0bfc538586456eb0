"""Checks a validated SweepConfig against the world before anything expensive starts.

The model (config loads, layers in range, the update parameter exists; then `sweep.space.file_checks`: the
trainer's and the eval backend's architectures, the weights files' headers, the tokenizer), the data files
(exist, decode, non-empty, have the field), the eval sets (decode, split), that no eval question occurs in a
training stream, the storage (`sweep.space.file_checks`), the MLflow URI and the Ray address. Each problem names
the field and the fix; nothing is written to disk.
"""

from __future__ import annotations

import math
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.config import TEXT_ATTACKS
from eval.paths import make_hint, resolve_uri
from sweep.space.config import ConfigError, SweepConfig


@dataclass
class ModelInfo:
    path: str
    arch: str
    num_layers: int
    hidden_size: int
    n_params: int | None
    checked: bool  # False when the model lives only on the cluster (not checked here)


def load_model_config(cfg: SweepConfig) -> Any:
    from transformers import AutoConfig

    path = resolve_uri(cfg.model.path)
    kw = dict(trust_remote_code=cfg.model.trust_remote_code)
    if Path(path).is_dir():
        return AutoConfig.from_pretrained(path, **kw)
    return AutoConfig.from_pretrained(path, local_files_only=True, **kw)  # hub id: only the local cache


def check_model(cfg: SweepConfig) -> ModelInfo:
    """Load the model's config (no weights), check layer range and update parameter names."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_uri(cfg.model.path)
    local = Path(path).is_dir()
    if not local and (path.startswith(("/", "./", "../")) or os.sep in path.strip("/").split("/", 2)[-1]):
        raise ConfigError("model", [("model.path", f"{path!r} is not a directory; give an HF model directory, "
                                                   "a hub id, or organism://base")])
    try:
        mcfg = load_model_config(cfg)
    except Exception as e:  # noqa: BLE001 - any load failure becomes a field error
        if not local and make_hint(path):  # a generated folder (assets/smollm2) not made yet
            raise ConfigError("model", [("model.path", f"{path!r} does not exist{make_hint(path)}")]) from None
        if not local and cfg.ray.address not in (None, "local"):
            return ModelInfo(path, "?", -1, -1, None, checked=False)  # resolved on the cluster
        hint = ("it is not a local directory and not in the local HF cache; download it first or give a "
                "directory" if not local else f"its config.json does not load: {e}")
        raise ConfigError("model", [("model.path", f"{path!r}: {hint}")]) from None
    n_layers = mcfg.num_hidden_layers
    layer = cfg.search.space["layer"]
    bad = [v for v in layer.candidates() if v >= n_layers]
    if bad:
        raise ConfigError("model", [("search.space.layer", f"{layer.describe()} reaches layer {max(bad)}, but "
                                     f"{path} has {n_layers} layers (0..{n_layers - 1}); keep layer <= "
                                     f"{n_layers - 1}")])
    # A model on the meta device has every parameter name and shape and costs no memory.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=cfg.model.trust_remote_code)
    names = dict(model.named_parameters())
    for li in sorted({int(v) for v in layer.candidates()}):
        for name in cfg.model.param_names(li):
            if name not in names:
                prefix = name.rsplit(".", len(cfg.model.update.param.split(".")))[0]
                here = sorted(n.removeprefix(prefix + ".") for n in names if n.startswith(prefix + "."))
                raise ConfigError("model", [("model.update.param", f"{name!r} is not a parameter of {path} "
                                             f"({type(model).__name__}); parameters of {prefix}: "
                                             f"{', '.join(here) or 'none'}")])
    from sweep.space.file_checks import check_model_files

    check_model_files(cfg, path, model, local)  # architecture, weights headers, tokenizer
    n_params = sum(p.numel() for p in names.values())
    return ModelInfo(path, type(model).__name__, n_layers, mcfg.hidden_size, n_params, checked=True)


def check_data(cfg: SweepConfig) -> dict[str, int]:
    """Every training stream exists, is non-empty and has its text field. Returns record counts."""
    from trainables.data import read_records

    streams = {"data.forget": cfg.data.forget, "data.retain": cfg.data.retain, "data.cot": cfg.data.cot}
    counts, problems = {}, []
    for where, c in streams.items():
        try:
            counts[where] = len(read_records(resolve_uri(c.path), c.field, c.limit, what=where))
        except (OSError, ValueError) as e:  # the message names the field (data.forget.path: ...)
            problems.append(("", str(e)))  # every stream checked: all bad paths in one report
    t = cfg.data.traces
    if t.source:
        try:
            counts["data.traces"] = len(read_records(resolve_uri(t.source), t.field, t.limit, what="data.traces"))
        except (OSError, ValueError) as e:
            problems.append(("", str(e).replace("data.traces.path", "data.traces.source")))
    if problems:
        raise ConfigError("data", problems)
    return counts


def check_eval(cfg: SweepConfig) -> list[str]:
    """Every eval set is registered, fits its slot (forget/retain: MCQ, reasoning: reasoning) and its local
    path exists. Sets without a local path load from the hub on a cluster (not checked here)."""
    from eval.benchmarks import REGISTRY

    slots = [("eval.forget", [cfg.eval.forget], "mcq")] + [
        (f"eval.{name}", refs, kind) for name, refs, kind in
        (("reasoning", cfg.eval.reasoning, "reasoning"), ("retain", cfg.eval.retain, "mcq"))]
    names, problems = [], []
    for where, refs, kind in slots:
        for i, ref in enumerate(refs):  # every set checked: all bad paths in one report
            at = where if where == "eval.forget" else f"{where}.{i}"
            spec = REGISTRY.get(ref.set)
            if spec is None:
                problems.append((f"{at}.set", f"unknown set {ref.set!r}; accepted: {', '.join(REGISTRY)}"))
            elif spec.kind != kind:
                problems.append((f"{at}.set", f"{ref.set!r} is a {spec.kind} set; this slot takes {kind} sets"))
            elif ref.path and not Path(resolve_uri(ref.path)).exists():
                problems.append((f"{at}.path", f"no such file or directory {ref.path!r}"))
            elif not ref.path and spec.default_path is None and spec.hub is None:
                problems.append((f"{at}.path", f"set {ref.set!r} needs a path to a local file"))
            else:
                names.append(ref.set + ("" if ref.path or spec.default_path else " (hub)"))
    if cfg.eval.judge == "llm" and not cfg.eval.judge_model:
        problems.append(("eval.judge_model", "judge: llm needs judge_model (a local model directory)"))
    if problems:
        raise ConfigError("eval", problems)
    return names


OVERLAP_NGRAM = 6  # eval questions are indexed by their first this many normalised words


def normalise(text: str) -> str:
    """Casefolded, whitespace runs collapsed to one space, stripped."""
    return " ".join(text.casefold().split())


@dataclass
class _Question:
    where: str  # eval.forget, eval.retain.0, ...
    set: str
    path: str
    text: str  # as the eval set has it
    norm: str


class QuestionIndex:
    """Eval questions indexed by their first OVERLAP_NGRAM normalised words (the whole question if shorter).

    `find(text)` scans the text's word n-grams once, looking each up in the dict, and verifies each candidate
    by a string comparison at that word: linear in the text, not in the number of questions. A question is
    contained when its normalised text occurs in the normalised text starting at a word boundary."""

    def __init__(self, questions: list[_Question], n: int = OVERLAP_NGRAM) -> None:
        self.by_key: dict[tuple[str, ...], list[_Question]] = {}
        for q in questions:
            words = q.norm.split(" ")
            if q.norm:
                self.by_key.setdefault(tuple(words[:n]), []).append(q)
        self.lengths = sorted({len(k) for k in self.by_key})

    def find(self, text: str) -> list[_Question]:
        norm = normalise(text)
        words = norm.split(" ")
        starts, at = [], 0
        for w in words:
            starts.append(at)
            at += len(w) + 1
        hits = []
        for i in range(len(words)):
            for n in self.lengths:
                if i + n > len(words):
                    break
                for q in self.by_key.get(tuple(words[i:i + n]), ()):
                    if norm.startswith(q.norm, starts[i]):
                        hits.append(q)
        return hits


def eval_questions(cfg: SweepConfig) -> list[_Question]:
    """Every item of every locally loadable eval set (no limit, no split): MCQ `question`, reasoning `problem`.
    Hub-only sets (no local path) are skipped; `check_eval` reports missing files."""
    from eval.benchmarks import REGISTRY, load_set

    refs = [("eval.forget", cfg.eval.forget)] + [(f"eval.reasoning.{i}", r) for i, r in enumerate(cfg.eval.reasoning)]
    refs += [(f"eval.retain.{i}", r) for i, r in enumerate(cfg.eval.retain)]
    out = []
    for where, ref in refs:
        spec = REGISTRY.get(ref.set)
        source = ref.path or (spec.default_path if spec else None)
        if spec is None or source is None or not Path(resolve_uri(source)).exists():
            continue
        key = "problem" if spec.kind == "reasoning" else "question"
        try:  # every item, decoded: a bad byte or record is refused here, not in the first evaluation
            items = load_set(ref.set, resolve_uri(source), None, cfg.eval.seed)
        except Exception as e:  # noqa: BLE001 - any failure to load the set is the refusal
            msg = str(e) if type(e) in (OSError, ValueError, FileNotFoundError) else f"{type(e).__name__}: {e}"
            raise ConfigError("eval", [(f"{where}.path", f"eval set {ref.set!r} ({source}): {msg}")]) from None
        check_split(where, ref, items, cfg.eval.split_seed)  # loaded here anyway: the split sizes too
        for item in items:
            out.append(_Question(where, ref.set, source, item[key], normalise(item[key])))
    return out


def check_split(where: str, ref: Any, items: list[dict], split_seed: int) -> None:
    """Both parts of a set's selection/test split must hold items, or the trials (or the final evaluation)
    would be scored on nothing."""
    from eval.stats import split_items

    selection, test = split_items(items, ref.test, split_seed)
    if not selection:
        raise ConfigError("eval", [(f"{where}.test", f"{ref.test:g} leaves none of the {len(items)} items of "
                                    f"{ref.set!r} for the selection split; give a smaller count or a fraction < 1")])
    if ref.test > 0 and not test:
        raise ConfigError("eval", [(f"{where}.test", f"{ref.test:g} puts none of the {len(items)} items of "
                                    f"{ref.set!r} in the test split; give a larger fraction or a count >= 1")])


def check_overlap(cfg: SweepConfig) -> str:
    """No eval question may occur in a training stream of the same space: the forget stream, the questions the
    traces are generated on (data.traces.source, else data.forget), the CoT stream, and the texts a relearn
    attack fine-tunes on (eval.attacks)."""
    from eval.attack_weights import read_texts
    from trainables.data import read_records

    questions = eval_questions(cfg)
    index = QuestionIndex(questions)
    t = cfg.data.traces
    # (stream, config field of its file, file, text field, limit)
    streams = [("data.forget", "data.forget.path", cfg.data.forget.path, cfg.data.forget.field, cfg.data.forget.limit),
               ("data.traces", "data.traces.source", t.source, t.field, t.limit) if t.source else
               ("data.traces (on data.forget's questions)", "data.forget.path", cfg.data.forget.path,
                cfg.data.forget.field, t.limit),
               ("data.cot", "data.cot.path", cfg.data.cot.path, cfg.data.cot.field, cfg.data.cot.limit)]
    relearn = [(f"eval.attacks.{n}", f"eval.attacks.{n}.path", a.path, a.field, a.examples)
               for n, a in cfg.eval.attacks.items() if a.kind in TEXT_ATTACKS]
    seen, n_records = set(), 0
    for where, field_path, path, field, limit in streams + relearn:
        file = resolve_uri(path)
        if (file, field, limit) in seen or (file, field, None) in seen:
            continue  # the traces' questions are the forget stream's: already scanned
        seen.add((file, field, limit))
        try:
            texts = read_texts(path, field, limit, field_path) if where.startswith("eval.") else \
                read_records(file, field, limit, what=field_path.rsplit(".", 1)[0])
        except (OSError, ValueError) as e:  # check_data reports these first when check_all runs
            raise ConfigError("data", [("", str(e))]) from None
        n_records += len(texts)
        found: dict[str, list[tuple[_Question, int]]] = {}
        for line, text in enumerate(texts, 1):
            for q in index.find(text):
                found.setdefault(q.where, []).append((q, line))
        if found:
            at, hits = next(iter(found.items()))
            q, line = hits[0]
            n_q = len({h[0].norm for h in hits})
            shown = q.text if len(q.text) <= 200 else q.text[:200] + "..."
            what = "training stream" if not where.startswith("eval.") else "attack's texts"  # its last word: below
            raise ConfigError("data", [(
                field_path, f"{n_q} question(s) of the eval set {at} ({q.set}, {q.path}) occur in the {what} "
                f"{where} ({path}, field {field!r}), e.g. record {line} contains {shown!r}; an eval item the "
                f"model was trained on measures nothing. Remove these items from the {what.split()[-1]}, or give "
                "the eval set a disjoint file")])
    files = dict.fromkeys(p for _, _, p, _, _ in streams + relearn)
    return f"no overlap: {len(questions)} eval questions against {n_records} training records ({', '.join(files)})"


def linear_input_widths(model_config: Any) -> set[int]:
    """The input widths of a decoder block's linear layers (attention in and out, MLP in and out): what an int4
    group must divide."""
    c = model_config
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {c.hidden_size, heads * head_dim, getattr(c, "intermediate_size", c.hidden_size)}


def check_attacks(cfg: SweepConfig, num_layers: int | None = None) -> str:
    """Each relearn and orthogonalize attack's texts can be read (file, format, field), each probe's layers exist
    in the model and each int4 group divides its linear layers' widths (where the model was checked:
    `num_layers`); what the attacks are."""
    from eval.attack_weights import read_texts

    problems = []
    for name, a in cfg.eval.attacks.items():
        if a.kind == "probe" and num_layers is not None and a.layers and max(a.layers) > num_layers:
            problems.append((f"eval.attacks.{name}.layers", f"{max(a.layers)}: the model has hidden states "
                             f"0..{num_layers} (0 = embeddings); give layers in that range, or leave it out"))
        if a.kind == "quantize" and a.bits == 4 and num_layers is not None:
            widths = linear_input_widths(load_model_config(cfg))
            if bad := sorted(w for w in widths if w % a.group_size):
                problems.append((f"eval.attacks.{name}.group_size", (
                    f"{a.group_size} does not divide the input width {bad[0]} of the model's linear layers "
                    f"(widths {sorted(widths)}); give a divisor of {math.gcd(*widths)}, e.g. "
                    f"{math.gcd(*widths, 64)}")))
        if a.kind in TEXT_ATTACKS:
            try:
                read_texts(a.path, a.field, a.examples, f"eval.attacks.{name}.path")
            except (OSError, ValueError) as e:
                problems.append((f"eval.attacks.{name}.path", str(e).removeprefix(f"eval.attacks.{name}.path: ")))
    if problems:
        raise ConfigError("eval", problems)
    if not cfg.eval.attacks:
        return "none"
    searched = cfg.searched_attacks()
    return ", ".join(f"{n} ({a.kind})" for n, a in cfg.eval.attacks.items()) + \
        (f"; every trial: {', '.join(searched)}" if searched else "; after the search, on the test split")


def check_mlflow(cfg: SweepConfig) -> str:
    """A SQLite store must be creatable; a server must answer. Never falls back to another store."""
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise ConfigError("mlflow", [("mlflow.tracking_uri", f"{uri!r}: folder {str(parent)!r} does not "
                                          "exist or is not writable; create it or point at another path")])
        return f"SQLite {db} ({'exists' if db.exists() else 'will be created'})"
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3).read()
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError("mlflow", [("mlflow.tracking_uri", f"{uri!r} is not reachable ({e}); start the "
                                          "server or fix the URI")]) from None
        return f"server {uri} (reachable)"
    raise ConfigError("mlflow", [("mlflow.tracking_uri", f"{uri!r}: use sqlite:///FILE.db or http(s)://HOST:PORT "
                                  "(file stores are deprecated in MLflow 3)")])


def check_ray(cfg: SweepConfig) -> str:
    addr = cfg.ray.address
    if addr in (None, "local"):
        return "local Ray (started by the sweep)"
    if addr == "auto":
        if not (os.environ.get("RAY_ADDRESS") or Path("/tmp/ray/ray_current_cluster").exists()):
            raise ConfigError("ray", [("ray.address", "'auto' but no running Ray cluster was found on this "
                                       "node; run `ray start --head` or give ray://HOST:10001")])
        return "the running cluster (auto)"
    if addr.startswith("ray://"):
        host, _, port = addr.removeprefix("ray://").partition(":")
        try:
            socket.create_connection((host, int(port or 10001)), timeout=3).close()
        except (OSError, ValueError) as e:
            raise ConfigError("ray", [("ray.address", f"{addr!r} is not reachable ({e})")]) from None
        return f"cluster {addr} (reachable)"
    raise ConfigError("ray", [("ray.address", f"{addr!r}: use null (local), auto, or ray://HOST:10001")])


def check_all(cfg: SweepConfig, source: str = "space file") -> dict[str, Any]:
    """Run every check and raise one ConfigError naming `source` with every problem found, so a user fixes
    them in one go. A check that needs another's result is skipped when that one failed (the overlap needs
    the data and eval files; the storage check runs without the model's hidden size). Returns what the plan
    prints."""
    from sweep.space.stores import check_optuna_storage, check_storage

    found: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []

    def run(name: str, check: Any, *args: Any) -> bool:
        try:
            found[name] = check(*args)
            return True
        except ConfigError as e:
            problems.extend(e.problems)
            return False

    model_ok = run("model", check_model, cfg)
    data_ok, eval_ok = run("data", check_data, cfg), run("eval", check_eval, cfg)
    m = found.get("model")
    layers = m.num_layers if model_ok and m.checked else None
    eval_ok = run("attacks", check_attacks, cfg, layers) and eval_ok
    if data_ok and eval_ok:
        run("overlap", check_overlap, cfg)
    m = found.get("model")
    run("storage", check_storage, cfg, m.hidden_size if model_ok and m.checked else None)
    run("mlflow", check_mlflow, cfg)
    run("optuna", check_optuna_storage, cfg)
    run("ray", check_ray, cfg)
    if problems:
        raise ConfigError(source, with_make_hints(cfg, problems))
    return found


def with_make_hints(cfg: SweepConfig, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each problem that names a missing file of a generated folder gets the command that writes it."""
    refs = [cfg.eval.forget, *cfg.eval.reasoning, *cfg.eval.retain]
    paths = [cfg.model.path, cfg.data.forget.path, cfg.data.retain.path, cfg.data.cot.path, cfg.data.traces.source,
             cfg.eval.judge_model, *(r.path for r in refs),
             *(a.path for a in cfg.eval.attacks.values() if a.kind in TEXT_ATTACKS)]
    hints = {p: h for p in paths if p and (h := make_hint(p))}
    out = []
    for field, msg in problems:
        hint = next((h for p, h in hints.items() if p in msg or Path(p).as_posix() in msg), "")
        out.append((field, msg + hint if hint and hint not in msg else msg))
    return out
