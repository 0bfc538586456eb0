"""The search: Tune distributions from the space, and constraints handed to Optuna as infeasibility."""

from __future__ import annotations

from sweep.lifecycle import worst_value
from sweep.space.config import parse_space
from sweep.tuner import ConstraintValues, make_searcher


def test_suggestions_respect_the_space(space):
    space["search"]["space"]["alpha"] = {"choice": [1, 10]}
    cfg = parse_space(space)
    searcher = make_searcher(cfg, "t", None, baseline=None)
    for i in range(20):
        p = searcher.suggest(f"t{i}")
        assert isinstance(p["layer"], int) and 2 <= p["layer"] <= 5
        assert 0.5 <= p["steering_rel"] <= 2 and 1e-4 <= p["lr"] <= 1e-3 and p["alpha"] in (1, 10)
        assert "steps" not in p  # fixed values are not searched


def test_constraint_violation_reaches_optuna(space):
    space["search"]["constraints"] = {"retain_acc": ">= baseline - 0.05"}
    cfg = parse_space(space)
    searcher = make_searcher(cfg, "t", None, baseline={"retain_acc": 0.9})
    good = {"trace_leak": 0.1, "reason_acc": 0.9, "retain_acc": 0.88}
    bad = {"trace_leak": 0.0, "reason_acc": 1.0, "retain_acc": 0.5}
    for tid, result in (("a", good), ("b", bad), ("c", {"trace_leak": 0.0, "reason_acc": 1.0})):
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, result)
    trials = searcher._ot_study.trials
    assert trials[0].constraints["retain_acc"] <= 0  # 0.88 >= 0.85
    assert trials[1].constraints["retain_acc"] > 0  # 0.5 < 0.85: infeasible
    assert trials[2].constraints["retain_acc"] > 0  # a missing metric counts as violated
    assert [t.values for t in trials[:2]] == [[0.1, 0.9], [0.0, 1.0]]


def test_constraint_values_sign():
    from sweep.space.config import Constraint

    cv = ConstraintValues({"a": Constraint.parse(">= 0.8"), "b": Constraint.parse("<= 0.1")}, None)
    assert cv({"a": 0.9, "b": 0.05}) == [pytest_approx(-0.1), pytest_approx(-0.05)]
    assert all(v > 0 for v in cv({"a": 0.7, "b": 0.2}))
    assert worst_value("trace_leak", "min") == 1.0 and worst_value("reason_acc", "max") == 0.0


def pytest_approx(x):
    import pytest

    return pytest.approx(x)


def test_a_deleted_experiment_is_refused_with_the_uri(space, tmp_path):
    import pytest
    from mlflow.tracking import MlflowClient

    from sweep.space.config import ConfigError
    from sweep.tracking import ensure_experiment

    cfg = parse_space(space)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    client.delete_experiment(ensure_experiment(cfg))
    with pytest.raises(ConfigError, match="is deleted at sqlite:"):
        ensure_experiment(cfg)


def test_gp_sampler_models_objectives_and_constraints(space):
    """search.algorithm: gp is Optuna's GPSampler; past its random warm-up it fits the objectives and the
    constraint (told through trial.constraints) and keeps proposing points inside the space."""
    import optuna

    space["search"] |= {"algorithm": "gp", "num_samples": 16, "constraints": {"retain_acc": ">= 0.5"}}
    cfg = parse_space(space)
    searcher = make_searcher(cfg, "gp", None, baseline=None)
    assert isinstance(searcher._ot_study.sampler, optuna.samplers.GPSampler)
    for i in range(8):  # 4 random warm-up trials, then 4 from the fitted processes
        p = searcher.suggest(f"g{i}")
        assert 2 <= p["layer"] <= 5 and 0.5 <= p["steering_rel"] <= 2 and 1e-4 <= p["lr"] <= 1e-3
        leak = p["steering_rel"] / 2  # a smooth synthetic response, so the fit has something to model
        searcher.on_trial_complete(f"g{i}", {"trace_leak": leak, "reason_acc": 1 - leak / 2,
                                             "retain_acc": 1 - leak})
    trials = searcher._ot_study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    assert all("retain_acc" in t.constraints for t in trials)
