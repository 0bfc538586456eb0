"""`r2mu-sweep COMMAND ...`: one console command for the tools, beside their `python -m` forms.

`r2mu-sweep run --space FILE` is `python -m sweep.run --space FILE`, and so on; each subcommand's own
`--help` lists its flags. Installed by `pip install -e .` (pyproject.toml `[project.scripts]`).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose main(argv) runs it, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sweep.run", "the multi-objective sweep (--dry-run: check everything, print the plan)"),
    "trial": ("sweep.single_trial", "one trial with fixed hyperparameters, no Tune; metrics as JSON"),
    "pareto": ("sweep.results.pareto", "re-print a sweep's Pareto front and its test-split table"),
    "export": ("sweep.results.export", "a chosen trial as a plain Hugging Face model (optionally registered)"),
    "compare": ("sweep.results.compare", "sweeps' Pareto fronts side by side; several seeds per method: mean, spread"),
    "final": ("sweep.results.final", "evaluate named trials of a finished sweep on the test split"),
    "samples": ("sweep.results.samples", "the knee's traces beside the base model's, items picked by a fixed rule"),
    "report": ("sweep.results.report", "one HTML page of a sweep: front, curves, the knee's traces beside the base's"),
    "eval": ("eval.suite", "evaluate any model on an eval suite"),
}


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: r2mu-sweep COMMAND [ARGS ...]   (r2mu-sweep COMMAND --help: that command's flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}{what}  (python -m {module})" for name, (module, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (r2mu-sweep --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])  # here: each command imports only what it needs
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
