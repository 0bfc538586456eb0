"""Comparing sweeps: the hypervolume against inclusion-exclusion, coverage, and the CLI on a real MLflow store."""

import itertools
import random

import pytest
from mlflow.tracking import MlflowClient

from sweep.compare import compare, costs, coverage, hypervolume, main
from sweep.pareto import Point

OBJ = {"trace_leak": "min", "reason_acc": "max"}


def by_inclusion_exclusion(points, ref):
    """The union of the boxes [p, ref], exactly: sum over subsets of (-1)^(|S|+1) x volume of their meet."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            meet = 1.0
            for d in range(len(ref)):
                meet *= max(0.0, ref[d] - max(p[d] for p in subset))
            total += (-1) ** (k + 1) * meet
    return total


def test_hypervolume_by_hand():
    assert hypervolume([(0.5, 0.5)]) == pytest.approx(0.25)
    assert hypervolume([(0.2, 0.6), (0.6, 0.2)]) == pytest.approx(0.48)
    assert hypervolume([(0.2, 0.6), (0.6, 0.2), (0.7, 0.7)]) == pytest.approx(0.48)  # dominated: adds nothing
    assert hypervolume([(0.5, 0.5, 0.5)]) == pytest.approx(0.125)
    assert hypervolume([(1.0, 0.0)]) == 0.0 and hypervolume([]) == 0.0  # on the reference box's edge


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(dims):
    rng = random.Random(dims)
    for _ in range(20):
        pts = [tuple(rng.random() for _ in range(dims)) for _ in range(rng.randint(1, 7))]
        assert hypervolume(pts) == pytest.approx(by_inclusion_exclusion(pts, (1.0,) * dims), abs=1e-12)


def test_costs_and_coverage():
    a = [Point("a1", {"trace_leak": 0.1, "reason_acc": 0.9})]
    b = [Point("b1", {"trace_leak": 0.2, "reason_acc": 0.8}), Point("b2", {"trace_leak": 0.05, "reason_acc": 0.5})]
    assert costs(a[0], OBJ) == pytest.approx((0.1, 0.1))
    assert coverage(a, b, OBJ) == 0.5 and coverage(b, a, OBJ) == 0.0
    with pytest.raises(ValueError, match="objective reason_acc = 3.0 is not a rate"):
        costs(Point("x", {"trace_leak": 0.1, "reason_acc": 3.0}), OBJ)


def log_sweep(client: MlflowClient, name: str, trials: list[tuple[float, float]], space: dict) -> None:
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"role": "sweep"}, run_name=name).info.run_id
    client.log_dict(parent, space | {"name": name}, "config.json")
    child = {"mlflow.parentRunId": parent}
    base = client.create_run(exp, tags=child | {"role": "baseline"}).info.run_id
    for key, value in {"trace_leak": 0.9, "reason_acc": 0.9, "retain_acc": 1.0}.items():
        client.log_metric(base, key, value)
    for i, (leak, reason) in enumerate(trials):
        run = client.create_run(exp, tags=child | {"role": "trial", "status": "ok"}, run_name=f"{name}-{i}")
        for key, value in {"trace_leak": leak, "reason_acc": reason, "retain_acc": 0.95}.items():
            client.log_metric(run.info.run_id, key, value)


def test_cli_on_two_sweeps_in_a_real_store(tmp_path, space, capsys):
    uri = f"sqlite:///{tmp_path}/cmp.db"
    client = MlflowClient(uri)
    space = space | {"mlflow": {"tracking_uri": uri}}
    log_sweep(client, "method-a", [(0.1, 0.8), (0.3, 0.9), (0.5, 0.5)], space)
    log_sweep(client, "method-b", [(0.4, 0.8), (0.6, 0.9)], space)
    result = compare(uri, ["method-a", "method-b"], OBJ)
    a, b = result["sweeps"]["method-a"], result["sweeps"]["method-b"]
    assert sorted(p.name for p in a["front"]) == ["method-a-0", "method-a-1"]
    assert a["hypervolume"] == pytest.approx(by_inclusion_exclusion([(0.1, 0.2), (0.3, 0.1)], (1, 1)))
    assert b["hypervolume"] == pytest.approx(by_inclusion_exclusion([(0.4, 0.2), (0.6, 0.1)], (1, 1)))
    assert result["coverage"] == {("method-a", "method-b"): 1.0, ("method-b", "method-a"): 0.0}

    plot = tmp_path / "fronts.png"
    assert main(["--experiments", "method-a", "method-b", "--tracking-uri", uri, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "C(method-a, method-b) = 1.00" in out and plot.stat().st_size > 10_000
    assert "knee: trace_leak  reason_acc" in out  # the objectives of method-a's logged config.json
    assert main(["--experiments", "method-a", "--tracking-uri", uri]) == 2
    assert main(["--experiments", "method-a", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err
