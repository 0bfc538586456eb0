# Sourced by the study scripts: `states EXPERIMENT...` prints one line per name, in order: done (its latest
# sweep run ended FINISHED), partial (it did not: stopped, resume it) or missing, from ./mlflow.db. One Python
# process for all names (importing MLflow is most of its time); `$PY` is the Python to ask MLflow with.
states() {
  "$PY" - "$@" <<'PYEOF'
import sys, mlflow
c = mlflow.MlflowClient("sqlite:///mlflow.db")
for name in sys.argv[1:]:
    e = c.get_experiment_by_name(name)
    runs = c.search_runs([e.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1) if e else []
    print("missing" if not runs else "done" if runs[0].info.status == "FINISHED" else "partial")
PYEOF
}
