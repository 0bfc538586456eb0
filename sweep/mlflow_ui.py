"""What MLflow's web UI reads from a sweep's experiment, set where the sweep creates it (tracking.ensure_experiment).

MLflow 3.17 opens every experiment in its GenAI view (an empty Traces overview; the trials listed as
"Evaluation runs", no metric columns). Measured in its UI bundle and in a headless Chromium against
`mlflow server` (docs/usage.md, "Look at a sweep"):
- The experiment tag `mlflow.experimentKind` (`custom_model_development`: the classic ML runs view) is what
  the UI's experiment-kind selector writes; 3.17 builds with the sidebar's "GenAI | Model training" switch
  instead and ignore the tag. We set it anyway (where no one has chosen): other MLflow builds read it.
- What 3.17 does honour is the URL: `?workflowType=machine_learning` opens the classic view, and
  `viewStateShareKey=KEY` loads the runs-table state stored in the experiment tag
  `mlflow.sharedViewState.KEY` (the UI's own "share view" feature, JSON). The sweep stores one such view,
  `sweep`: only the trial runs, sorted by the first objective, with the objectives, the constraints, the
  searched hyperparameters and the `pareto` tag as columns. `view_url` gives the link.
"""

from __future__ import annotations

import json
from typing import Any

KIND_TAG = "mlflow.experimentKind"
CLASSIC_KIND = "custom_model_development"  # the UI's name for the classic ML (runs table) view
VIEW_KEY = "sweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def runs_view(cfg: Any) -> dict[str, Any]:
    """The runs-table state of the `sweep` view (the keys the UI's share feature stores)."""
    objectives = dict(cfg.search.objectives)
    first, mode = next(iter(objectives.items()))
    metrics = list(dict.fromkeys([*objectives, *cfg.search.constraints]))
    return {"searchFilter": "tags.role = 'trial'", "orderByKey": _column("metrics", first),
            "orderByAsc": mode == "min",
            "selectedColumns": [_column("metrics", m) for m in metrics]
            + [_column("params", p) for p in cfg.search.searched()]
            + [_column("tags", "pareto"), _column("tags", "objective_check")]}


def set_ui_tags(client: Any, experiment_id: str, cfg: Any) -> None:
    """The experiment kind (unless already chosen) and the sweep's runs view (always: it follows the config)."""
    tags = client.get_experiment(experiment_id).tags
    if KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, KIND_TAG, CLASSIC_KIND)
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(runs_view(cfg)))


def view_url(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The classic runs view of the sweep's trials in `mlflow ui` (default host and port)."""
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
            "&workflowType=machine_learning")
