"""README.md's and docs/usage.md's commands and README's space-file excerpt, run so they cannot rot: every
`python -m MODULE` and `r2mu-sweep COMMAND` they name answers `--help` and knows each flag they give it, the dry
runs they show pass, and the YAML excerpt is a valid space file."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep.cli import COMMANDS
from sweep.space.config import parse_space

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = README + (ROOT / "docs" / "usage.md").read_text()


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands() -> list[str]:
    """Every `python -m ...` and `r2mu-sweep ...` line of the two documents' bash blocks, comments cut, as
    `python -m`."""
    lines = [ln.split("#")[0].strip() for block in _blocks("bash", DOCS) for ln in block.splitlines()]
    lines = [f"python -m {COMMANDS[ln.split()[1]][0]} {ln.split(maxsplit=2)[2]}" if ln.startswith("r2mu-sweep ")
             else ln for ln in lines]
    return [ln for ln in lines if ln.startswith("python -m ")]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_readme_has_the_two_setup_commands():
    setup = _blocks("bash")[0]
    assert "make demo" in setup and "make test" in setup
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


MODULES = sorted({cmd.split()[2] for cmd in _commands()} | set(re.findall(r"python -m ([\w.]*\w)", DOCS))
                 | {COMMANDS[name][0] for name in re.findall(r"r2mu-sweep (\w+)", DOCS) if name in COMMANDS})


@pytest.mark.parametrize("module", MODULES)
def test_readme_module_answers_help_and_knows_its_flags(module):
    out = _run(["-m", module, "--help"])
    assert out.returncode == 0, out.stderr[-2000:]
    used = {flag for cmd in _commands() if cmd.split()[2] == module for flag in re.findall(r"(--[a-z][a-z-]*)", cmd)}
    unknown = [flag for flag in sorted(used) if flag not in out.stdout]
    assert not unknown, f"README or docs/usage.md gives {module} flags its --help does not list: {unknown}"


def test_readme_dry_run_passes():
    dry = [cmd for cmd in _commands() if "--dry-run" in cmd]
    assert dry, "README shows no dry run"
    for cmd in dry:
        out = _run(cmd.split()[1:])
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


def test_readme_space_file_excerpt_is_valid():
    (excerpt,) = _blocks("yaml")
    cfg = parse_space(yaml.safe_load(excerpt), "README.md")
    assert cfg.search.objectives and cfg.eval.attacks
