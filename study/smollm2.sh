#!/usr/bin/env bash
# The SmolLM2 part of #16 (docs/study_organism.md): R²MU with and without the first position in the forget and
# unthink masks (item 5), on search_spaces/smollm2.yaml, 8 trials each, 2 at a time, seed 42 (the yaml's), the
# data of smollm2/prepare.py. The R²MU sweep is the screened one of docs/screening.md "SmolLM2" (#12: its
# front is made of fully evaluated trials only). Each knee is then evaluated on the test split (96 items per
# set) once, and the baseline once (FRONT=1: every front trial). About 35 min a sweep and 6 min a trial's test
# evaluation on a 2-core CPU machine: run it when nothing else is.
#
#   bash study/smollm2.sh           # what is missing: a finished sweep is skipped, a stopped one resumed
#   bash study/smollm2.sh --list    # each sweep's command and state
#   SWEEPS="smollm2-noscreen smollm2-rmu" bash study/smollm2.sh   # others: unscreened R²MU, plain RMU (item 7)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# name -> its --set overrides, separated by ';' (the only differences between the sweeps)
declare -A SETS=(
  [smollm2-skip-bos]="data.skip_first_position=true"                 # R²MU, first position out of the masks
  [smollm2-screen3]="eval.screen={items: 12, confidence: 0.8}"       # R²MU, screened (#12)
  [smollm2-noscreen]=""                                              # R²MU, every trial evaluated in full
  [smollm2-rmu]="search.space.beta=0;search.space.gamma=0"           # plain RMU
)
SWEEPS=${SWEEPS:-"smollm2-skip-bos smollm2-screen3"}

source study/state.sh  # states EXPERIMENT...: done | partial | missing, a line each

untested() {  # the knee's run id (FRONT=1: every front trial's) where it has no test numbers yet
  "$PY" - "$1" "${FRONT:-0}" <<'EOF'
import sys, mlflow
c = mlflow.MlflowClient("sqlite:///mlflow.db")
e = c.get_experiment_by_name(sys.argv[1])
sweep = c.search_runs([e.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1)[0]
front = c.search_runs([e.experiment_id], f"tags.mlflow.parentRunId = '{sweep.info.run_id}' and tags.pareto = 'true'")
front = [r for r in front if sys.argv[2] == "1" or r.info.run_id == sweep.data.tags.get("knee_run_id")]
print(" ".join(r.info.run_id for r in front if "test/trace_leak" not in r.data.metrics))
EOF
}

for name in $SWEEPS; do  # every name checked before any sweep starts
  [ -n "${SETS[$name]+x}" ] || { echo "error: SWEEPS: unknown sweep $name (known: ${!SETS[*]})" >&2; exit 2; }
done

# shellcheck disable=SC2086
mapfile -t STATES < <(states $SWEEPS)  # each sweep's state before any starts (a sweep changes only its own)
[ "${#STATES[@]}" -eq $(wc -w <<< "$SWEEPS") ] || { echo "error: could not read the sweeps' states from mlflow.db" >&2; exit 1; }
first=1 i=0
for name in $SWEEPS; do
  args=(--space search_spaces/smollm2.yaml --num-samples 8 --final-eval none --set "name=$name")
  IFS=';' read -ra sets <<< "${SETS[$name]}"
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  st=${STATES[$i]}; i=$((i + 1))
  [ "$st" = partial ] && args+=(--resume)
  if [ "${1:-}" = "--list" ]; then echo "$st  $name  python -m sweep.run ${args[*]}"; continue; fi
  if [ "$st" != done ]; then
    echo "== $name: python -m sweep.run ${args[*]}  ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    "$PY" -m sweep.run "${args[@]}"
    echo "== $name: $(( $(date +%s) - start )) s"
  fi
  runs=$(untested "$name")
  if [ -n "$runs" ]; then  # the baseline's test numbers once (the first sweep's), then the knee's
    extra=(); [ $first = 1 ] || extra=(--no-baseline)
    echo "== $name: python -m sweep.results.final --experiment $name --runs $runs ${extra[*]}  ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    "$PY" -m sweep.results.final --experiment "$name" --runs $runs "${extra[@]}"
  fi
  first=0
done
