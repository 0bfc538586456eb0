#!/usr/bin/env bash
# The sweeps behind docs/study_organism.md (#16), on the bundled organism, all with the same budget (24 trials
# of 60 steps, organism.yaml's ranges and objectives) and seeds 42, 43, 44 (the trainer's and, through it, the
# sampler's). About 4 minutes a sweep on a 2-core CPU machine, one after another with nothing else running
# (204-274 s for the 7 sweeps of 2026-12-02; 11 minutes before the trials trained in their own processes).
#
#   bash study/organism.sh            # every sweep still missing; a finished one is skipped and a stopped one
#                                     # resumed (--resume), so run it again after a stop
#   bash study/organism.sh --list     # what each sweep is and whether it is done
#   STUDY_ONLY="r2mu,rmu" bash study/organism.sh   # some methods only (comma: one group, over all seeds)
#
# Each sweep is an MLflow experiment `study-<method>-s<seed>` in ./mlflow.db; its front and knee are evaluated on
# the test split at its end (the default `--final-eval front`). The comparison: see docs/study_organism.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"42 43 44"}

# method -> space file and overrides (the only differences between the methods)
declare -A SPACE=([r2mu]=organism [rmu]=rmu [no-unthink]=organism [no-cot]=organism [gp]=organism
                  [random]=organism [skip-bos]=organism [prefill]=organism)
declare -A SETS=(
  [r2mu]=""                                             # R²MU, TPE: also the sampler study's TPE arm
  [rmu]=""                                              # plain RMU: beta = gamma = 0 (rmu.yaml)
  [no-unthink]="search.space.beta=0"                    # R²MU without the unthink term
  [no-cot]="search.space.gamma=0"                       # R²MU without the CoT-preservation term
  [gp]="search.algorithm=gp"                            # R²MU, Optuna's GPSampler
  [random]="search.algorithm=random"                    # R²MU, random search
  [skip-bos]="data.skip_first_position=true"            # R²MU, the first position out of the forget/unthink masks
  [prefill]="search.objectives={trace_leak: min, forget_acc: min, reason_acc: max, prefill_acc: min}"
)
# in groups, each over all seeds before the next: a partial run leaves whole comparisons (R²MU vs RMU first)
GROUPS_=${STUDY_ONLY:-"r2mu,rmu no-unthink,no-cot gp,random skip-bos"}

source study/state.sh  # states EXPERIMENT...: done | partial | missing, a line each

jobs=()
for group in $GROUPS_; do
  for seed in $SEEDS; do
    for m in ${group//,/ }; do jobs+=("$m:$seed"); done
  done
done
[ -z "${STUDY_ONLY:-}" ] && jobs+=("prefill:42")  # one seed only
run_jobs "$@"  # study/state.sh: each job's sweep, skipped when done, resumed when stopped
