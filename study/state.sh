# Sourced by the study scripts: `state EXPERIMENT` prints done (its latest sweep run ended FINISHED), partial
# (it did not: stopped, resume it) or missing, from ./mlflow.db; `$PY` is the Python to ask MLflow with.
state() {
  "$PY" - "$1" <<'EOF'
import sys, mlflow
c = mlflow.MlflowClient("sqlite:///mlflow.db")
e = c.get_experiment_by_name(sys.argv[1])
runs = c.search_runs([e.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1) if e else []
print("missing" if not runs else "done" if runs[0].info.status == "FINISHED" else "partial")
EOF
}
