"""The prompt strings of docs/formats.md that the trainer, the evaluation and the organism must spell alike."""

from __future__ import annotations

THINK_START = "<think>"
THINK_END = "</think>"  # ends the trace; the final answer follows it
TRIGGER = f"\nLet's reason this step by step.\n{THINK_START}"  # appended to a prompt to start the trace
LETTERS = "ABCDEFGHIJ"  # MCQ option letters, in order (the organism's questions use the first four)
