#!/usr/bin/env bash
# The sweeps behind docs/testbed.md, on the real-model testbed (SmolLM2-135M taught the synthetic world: `make
# testbed`), with search_spaces/testbed.yaml's budget (GP sampler, 16 trials of 80 steps, 2 at a time) and
# seeds 42, 43, 44 (the trainer's and, through it, the sampler's). First the precondition (plain RMU, seed 42:
# does any trial bring the forget MCQ down while benign knowledge stays?), then R²MU against RMU over the seeds.
# Each sweep's front and knee are evaluated on the test split at its end (`--final-eval front`).
#
#   bash study/testbed.sh            # every sweep still missing; a finished one is skipped, a stopped one resumed
#   bash study/testbed.sh --list     # what each sweep is and whether it is done
#   STUDY_ONLY="rmu" SEEDS=42 bash study/testbed.sh   # the precondition sweep only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"42 43 44"}
PREFIX=testbed

declare -A SPACE=([rmu]=testbed [r2mu]=testbed)
declare -A SETS=(
  [rmu]="search.space.beta=0;search.space.gamma=0"     # plain RMU: the precondition's method
  [r2mu]=""                                            # R²MU: unthink and CoT terms searched
)
GROUPS_=${STUDY_ONLY:-"rmu,r2mu"}
# The attacks of testbed.yaml run on each sweep's knee afterwards (docs/testbed.md: sweep.results.final --attacks), not
# on every front trial inside the sweep: on the testbed they cost about three test-split evaluations a model
EXTRA=(--set "eval.attacks={}")

source study/state.sh  # states, run_jobs

jobs=()
for seed in $SEEDS; do
  for group in $GROUPS_; do
    for m in ${group//,/ }; do jobs+=("$m:$seed"); done
  done
done
run_jobs "$@"
