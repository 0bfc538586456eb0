"""`organism://` URIs -> the shipped files (no heavy imports: the sweep's config validation uses this)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"

URIS: dict[str, Path] = {
    "organism://base": ASSETS / "base",
    "organism://forget": ASSETS / "data" / "forget.jsonl",
    "organism://retain": ASSETS / "data" / "retain.jsonl",
    "organism://cot": ASSETS / "data" / "cot.jsonl",
    "organism://eval/forget": ASSETS / "data" / "eval_forget.jsonl",
    "organism://eval/retain": ASSETS / "data" / "eval_retain.jsonl",
    "organism://eval/arith": ASSETS / "data" / "eval_arith.jsonl",
}


def resolve(uri: str) -> Path:
    """The shipped file or directory for an `organism://` URI; ValueError naming the accepted ones."""
    try:
        return URIS[uri.rstrip("/")]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown organism URI {uri!r}; accepted: {', '.join(URIS)}") from None
