"""A trial's checkpoint under a full disk: the write fails with the OS's error and leaves nothing a later step
could read as good; with room again it is written whole. The disk is a real file-size limit on a real process
(RLIMIT_FSIZE), the checkpoint the trainer's own `checkpoint.write` with the real `save_delta`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import json, resource, signal, sys
from pathlib import Path

from tests.tiny import tiny_model
from tests.trainables.test_r2mu import NAMES
from trainables import checkpoint
from trainables.delta import base_identity, save_delta

out, limit = Path(sys.argv[1]), int(sys.argv[2])
model = tiny_model("llama", layers=6)
base = base_identity(model, "tiny://llama", NAMES)
history = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(5)]
save = lambda d: save_delta(model, NAMES, d, base, {"layer": 4}, {})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write raises EFBIG instead of killing us
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # the disk is "full" past `limit` bytes a file
try:
    checkpoint.write(out, history, {}, save)
    full = "written"
except OSError as e:
    full = f"{type(e).__name__}: {e}"
left = sorted(p.name for p in out.iterdir()) if out.exists() else []
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
checkpoint.write(out, history, {}, save)
print(json.dumps({"full": full, "left": left}))
"""


def test_a_checkpoint_written_to_a_full_disk_is_never_read_as_good(tmp_path):
    out = tmp_path / "trial"
    p = subprocess.run([sys.executable, "-c", WRITER, str(out), str(16 * 1024)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["full"].startswith("OSError") and "too large" in got["full"]  # EFBIG, from the real write
    assert got["left"] == [], "a failed write left a file or directory behind"

    from tests.tiny import tiny_model
    from tests.trainables.test_r2mu import NAMES
    from trainables import checkpoint

    trained = checkpoint.read(out / checkpoint.DIRNAME)  # the second write, with room, is whole
    params = dict(tiny_model("llama", layers=6).named_parameters())
    assert sorted(trained.delta) == sorted(NAMES)
    assert all(trained.delta[n].equal(params[n].detach()) for n in NAMES)
    assert [r["step"] for r in trained.history] == [0, 1, 2, 3, 4]
    assert not [f for f in (out / checkpoint.DIRNAME).iterdir() if "partial" in f.name]
