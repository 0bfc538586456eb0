"""Comparing sweeps: the hypervolume against inclusion-exclusion, coverage, and the CLI on a real MLflow store."""

import itertools
import random
import re

import pytest
from mlflow.tracking import MlflowClient

from sweep.results.compare import compare, costs, coverage, hypervolume, main
from sweep.results.pareto import Point

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


def log_sweep(client: MlflowClient, name: str, trials: list[tuple[float, float]], space: dict,
              starts: list[int] | None = None, test: dict[int, tuple[float, float]] | None = None) -> None:
    """A sweep's runs as `sweep.run` logs them; trial i is run `{name}-{i}`, started at `starts[i]` (ms);
    `test[i]`: its test-split (leak, reason) as the final evaluation logs them."""
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"role": "sweep"}, run_name=name).info.run_id
    client.log_dict(parent, space | {"name": name}, "config.json")
    child = {"mlflow.parentRunId": parent}
    base = client.create_run(exp, tags=child | {"role": "baseline"}).info.run_id
    for key, value in {"trace_leak": 0.9, "reason_acc": 0.9, "retain_acc": 1.0}.items():
        client.log_metric(base, key, value)
    for i, (leak, reason) in enumerate(trials):
        run = client.create_run(exp, tags=child | {"role": "trial", "status": "ok"}, run_name=f"{name}-{i}",
                                start_time=starts[i] if starts else None)
        for key, value in {"trace_leak": leak, "reason_acc": reason, "retain_acc": 0.95}.items():
            client.log_metric(run.info.run_id, key, value)
        if test and i in test:
            client.log_metric(run.info.run_id, "test/trace_leak", test[i][0])
            client.log_metric(run.info.run_id, "test/reason_acc", test[i][1])


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
    # plain names: one-seed methods named after their experiment, no spread to report
    assert result["methods"]["method-a"]["seeds"] == ["method-a"]
    assert result["methods"]["method-a"]["hypervolume"].std is None

    plot = tmp_path / "fronts.png"
    assert main(["--experiments", "method-a", "method-b", "--tracking-uri", uri, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "C(method-a, method-b) = 1.00" in out and plot.stat().st_size > 10_000
    assert "knee: trace_leak  reason_acc" in out  # the objectives of method-a's logged config.json
    assert f"{a['hypervolume']:.4f} ± - [" in out  # one seed: its value, no standard deviation
    assert main(["--experiments", "method-a", "--tracking-uri", uri]) == 2
    assert main(["--experiments", "method-a", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def test_several_seeds_per_method_mean_spread_and_coverage_over_seed_pairs(tmp_path, space, capsys):
    """One point per seed, so each seed's hypervolume is (1 - leak) x reason; the method's spread is over them."""
    uri = f"sqlite:///{tmp_path}/seeds.db"
    client = MlflowClient(uri)
    space = space | {"mlflow": {"tracking_uri": uri}}
    r2mu = {"r2mu-s0": (0.5, 0.5), "r2mu-s1": (0.2, 0.8), "r2mu-s2": (0.4, 0.6)}  # hypervolumes .25 .64 .36
    rmu = {"rmu-s0": (0.7, 0.3), "rmu-s1": (0.45, 0.55)}  # .09 .3025
    for name, point in (r2mu | rmu).items():
        log_sweep(client, name, [point], space)
    result = compare(uri, {"r2mu": list(r2mu), "rmu": list(rmu)}, OBJ)

    hv = result["methods"]["r2mu"]["hypervolume"]
    mean = (0.25 + 0.64 + 0.36) / 3
    std = ((0.25 - mean) ** 2 + (0.64 - mean) ** 2 + (0.36 - mean) ** 2) ** 0.5 / 2 ** 0.5  # n - 1 = 2
    assert hv.values == pytest.approx([0.25, 0.64, 0.36])
    assert (hv.mean, hv.std) == (pytest.approx(mean), pytest.approx(std))
    rmu_hv = result["methods"]["rmu"]["hypervolume"]
    assert (rmu_hv.mean, rmu_hv.std) == (pytest.approx(0.19625), pytest.approx((0.3025 - 0.09) / 2 ** 0.5))
    # rmu-s1 dominates r2mu-s0 only; r2mu-s1 and -s2 dominate rmu-s1: the mean over the 6 seed pairs, which
    # pooled fronts (1.0 and 1/3) would not give
    assert result["coverage"][("r2mu", "rmu")] == pytest.approx(5 / 6)
    assert result["coverage"][("rmu", "r2mu")] == pytest.approx(1 / 6)

    argv = ["--experiments", "r2mu=r2mu-s0,r2mu-s1,r2mu-s2", "rmu=rmu-s0,rmu-s1", "--tracking-uri", uri]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{mean:.4f} ± {std:.4f} [0.2500-0.6400]" in out
    assert all(f"{name:<14}" in out for name in r2mu | rmu) and "0.3025" in out  # a row per seed
    assert "C(r2mu, rmu) = 0.83" in out and "C(rmu, r2mu) = 0.17" in out and "mean over every pair" in out


def test_at_n_takes_each_sweeps_first_trials_by_start_time(tmp_path, space, capsys):
    uri = f"sqlite:///{tmp_path}/at.db"
    client = MlflowClient(uri)
    space = space | {"mlflow": {"tracking_uri": uri}}
    # s0's best trial (by name the first) started last; s1 has only two trials
    log_sweep(client, "tpe-s0", [(0.1, 0.9), (0.5, 0.5), (0.6, 0.4)], space, starts=[3000, 1000, 2000])
    log_sweep(client, "tpe-s1", [(0.2, 0.8), (0.4, 0.6)], space, starts=[1000, 2000])
    result = compare(uri, {"tpe": ["tpe-s0", "tpe-s1"]}, OBJ, at=[1, 2, 3])
    assert result["sweeps"]["tpe-s0"]["at"] == {1: pytest.approx(0.25), 2: pytest.approx(0.25),
                                               3: pytest.approx(0.81)}
    assert result["sweeps"]["tpe-s1"]["at"] == {1: pytest.approx(0.64), 2: pytest.approx(0.64), 3: None}
    at1 = result["methods"]["tpe"]["at"][1]
    assert (at1.mean, at1.std) == (pytest.approx(0.445), pytest.approx((0.64 - 0.25) / 2 ** 0.5))
    assert result["methods"]["tpe"]["at"][3].values == pytest.approx([0.81])  # only the seed that has 3 trials
    assert result["coverage"] == {}  # one method: nothing to cover

    assert main(["--experiments", "tpe=tpe-s0,tpe-s1", "--at", "3", "1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "hv@1     hv@3" in out and "(1 of 2 seeds)" in out and "coverage" not in out
    assert f"0.4450 ± {(0.64 - 0.25) / 2 ** 0.5:.4f} [0.2500-0.6400]" in out


@pytest.mark.parametrize("argv,words", [
    (["r2mu="], ["'r2mu=' has an empty method or experiment name", "METHOD=EXP,EXP"]),
    (["=a,b"], ["empty method"]),
    (["r2mu=a,,b"], ["empty method or experiment name"]),
    (["a,b"], ["'a,b' lists experiments without a method name", "write METHOD=a,b"]),
    (["r2mu=a", "r2mu=b"], ["method 'r2mu' is given twice", "r2mu=EXP,EXP"]),
    (["r2mu=a,b", "rmu=b,c"], ["b is listed more than once"]),
    (["only"], ["give two or more experiments", "one method with several seeds"]),
])
def test_a_bad_experiments_form_names_the_flag_and_the_fix(argv, words, capsys):
    assert main(["--experiments", *argv, "--tracking-uri", "sqlite:////nonexistent/x.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --experiments: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


def test_at_takes_positive_trial_counts(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--experiments", "a", "b", "--at", "0"])
    assert e.value.code == 2 and "--at: '0' is not a number of trials >= 1" in capsys.readouterr().err


def test_split_test_scores_each_front_as_chosen_by_its_test_numbers(tmp_path, space, capsys):
    """The front is the selection split's (trials 0 and 1 of a; 0 of b); its hypervolume, coverage and knee
    come from their test numbers, which here reverse the order of the two methods."""
    uri = f"sqlite:///{tmp_path}/test.db"
    client = MlflowClient(uri)
    space = space | {"mlflow": {"tracking_uri": uri}}
    log_sweep(client, "a", [(0.1, 0.8), (0.3, 0.9), (0.5, 0.5)], space, test={0: (0.6, 0.7), 1: (0.7, 0.8)})
    log_sweep(client, "b", [(0.4, 0.8), (0.6, 0.7)], space, test={0: (0.3, 0.8)})
    result = compare(uri, ["a", "b"], OBJ, split="test")
    a, b = result["sweeps"]["a"], result["sweeps"]["b"]
    assert sorted(p.name for p in a["front"]) == ["a-0", "a-1"] and [p.name for p in b["front"]] == ["b-0"]
    assert a["hypervolume"] == pytest.approx(by_inclusion_exclusion([(0.6, 0.3), (0.7, 0.2)], (1, 1)))
    assert b["hypervolume"] == pytest.approx(0.7 * 0.8)
    assert result["coverage"] == {("a", "b"): 0.0, ("b", "a"): 1.0}
    assert main(["--experiments", "a", "b", "--split", "test", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "scored by its test-split numbers" in out
    assert re.search(r"^a +a +3 +2 ", out, re.M), out  # the sweep's trials, then its front
    # a front trial without test numbers: the command that adds them; --at has nothing to read on test
    log_sweep(client, "c", [(0.2, 0.9)], space)
    assert main(["--experiments", "a", "c", "--split", "test", "--tracking-uri", uri]) == 2
    assert "python -m sweep.results.final --experiment c --runs" in capsys.readouterr().err
    assert main(["--experiments", "a", "b", "--split", "test", "--at", "2", "--tracking-uri", uri]) == 2
    assert "--at reads the selection split" in capsys.readouterr().err
