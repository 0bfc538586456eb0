"""Stream a trial's loss curves to its MLflow run while it trains (rank 0 only; `TrialSpec.tracking`).

`CurveSink.add(row)` buffers one history row ({"step", <term>..., "loss"}) with the wall-clock time the step
finished; every `every` rows, and once more at `close()`, the buffered points go to the run in one
`MlflowClient.log_batch`, under the keys the end-of-trial log uses (`metric_key`: `loss/<term>`,
`loss/total`), with the real step index and timestamp. Non-finite values are sent as they are (MLflow's
stores keep NaN and clamp +-inf, as the end-of-trial log does).

Sending runs on a background thread, so a slow store (SQLite waits up to 20 s on a lock; an HTTP client
retries a down server for minutes) never holds up a step; while a send is in flight the next flush is
skipped and its rows wait. A send that fails prints one warning line and keeps its points, in order, for the
next flush: logging never stops training. `close()` returns how many points MLflow did not get (0: the run
holds the whole curve). mlflow is imported on the first send, so training without tracking never imports it.
"""

from __future__ import annotations

import threading
import time

CHUNK = 900  # MLflow caps a batch at 1000 entries


def metric_key(name: str) -> str:
    """The MLflow key of a history row's field: `loss/<term>`, and `loss/total` for the weighted loss."""
    return f"loss/{'total' if name == 'loss' else name}"


def curve_points(row: dict, timestamp_ms: int) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of every number in a history row but the step itself."""
    step = int(row["step"])
    return [(metric_key(k), float(v), timestamp_ms, step) for k, v in row.items()
            if k != "step" and isinstance(v, int | float)]


class CurveSink:
    """Buffers history rows and sends them to one MLflow run every `every` rows (module docstring)."""

    def __init__(self, uri: str, run_id: str, every: int = 10):
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.uri, self.run_id, self.every = uri, run_id, every
        self._pending: list[tuple] = []  # points not sent yet, in order
        self._rows = 0  # rows added since the last flush
        self._thread: threading.Thread | None = None  # the send in flight
        self._inflight: list[tuple] = []  # its points
        self._unsent: list[tuple] = []  # what it could not deliver (written by its thread)
        self._client = None

    def add(self, row: dict) -> None:
        """Buffer a finished step's row, stamped now; every `every` rows, flush."""
        self._pending += curve_points(row, int(time.time() * 1000))
        self._rows += 1
        if self._rows >= self.every:
            self.flush()

    def flush(self) -> None:
        """Start sending every buffered point, unless the previous send is still in flight (then they wait)."""
        if not self.wait(0):
            return
        self._rows = 0
        self._inflight, self._pending = self._pending, []
        if self._inflight:
            self._thread = threading.Thread(target=self._send, args=(self._inflight,), name="curve-sink",
                                            daemon=True)  # a hung store never keeps the process alive
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the send in flight (at most `timeout` s); False if it is still running. The points it
        could not deliver go back to the front of the buffer."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread, self._inflight = None, []
            self._pending[:0], self._unsent = self._unsent, []
        return True

    def close(self, timeout: float = 60.0) -> int:
        """Send what is left and wait for it (at most `timeout` s in all); the number of points not delivered."""
        deadline = time.monotonic() + timeout
        if self.wait(timeout):
            self.flush()
            self.wait(max(0.0, deadline - time.monotonic()))
        return len(self._pending) + len(self._inflight)

    def _send(self, points: list[tuple]) -> None:
        done = 0
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            if self._client is None:
                self._client = MlflowClient(self.uri)
            for done in range(0, len(points), CHUNK):
                self._client.log_batch(self.run_id, metrics=[Metric(*p) for p in points[done:done + CHUNK]])
            done = len(points)
        except Exception as e:  # never stops training: keep the points for the next flush
            self._unsent = points[done:]
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"[curves] warning: {len(self._unsent)} loss points not logged to MLflow run {self.run_id} "
                  f"({type(e).__name__}: {msg}); retrying at the next flush", flush=True)
