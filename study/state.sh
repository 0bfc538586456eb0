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

# `run_jobs [--list]`: run the sweeps of the array `jobs` ("method:seed", in order) as experiments
# `$PREFIX-<method>-s<seed>`, each from space `search_spaces/${SPACE[method]}.yaml` with `--set ${SETS[method]}`
# (';' separates several) and `--set train.seed=<seed>`; a finished sweep is skipped, a stopped one resumed.
# EXTRA (an array, may be empty) is added to every sweep's arguments. --list prints each state and command.
run_jobs() {
  local names=() i job m seed name st start
  for job in "${jobs[@]}"; do names+=("${PREFIX:-study}-${job%%:*}-s${job##*:}"); done
  mapfile -t STATES < <(states "${names[@]}")  # each sweep's state before any starts (a sweep changes only its own)
  [ "${#STATES[@]}" -eq "${#names[@]}" ] || { echo "error: could not read the sweeps' states from mlflow.db" >&2; exit 1; }
  for i in "${!jobs[@]}"; do
    job=${jobs[$i]}; m=${job%%:*}; seed=${job##*:}; name=${names[$i]}
    args=(--space "search_spaces/${SPACE[$m]}.yaml" ${EXTRA[@]+"${EXTRA[@]}"} --set "name=$name" --set "train.seed=$seed")
    IFS=';' read -ra sets <<< "${SETS[$m]}"
    for s in "${sets[@]}"; do args+=(--set "$s"); done
    st=${STATES[$i]}
    [ "$st" = partial ] && args+=(--resume)  # a sweep stopped midway goes on from its last finished trial
    if [ "${1:-}" = "--list" ]; then echo "$st  $name  python -m sweep.run ${args[*]}"; continue; fi
    [ "$st" = done ] && { echo "== $name: done, skipped"; continue; }
    echo "== $name: python -m sweep.run ${args[*]}  ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    "$PY" -m sweep.run "${args[@]}"
    echo "== $name: $(( $(date +%s) - start )) s"
  done
}
