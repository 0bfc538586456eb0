#!/usr/bin/env bash
# A real multi-node Ray cluster on ONE machine: a head (`ray start --head`) plus N-1 worker raylets
# (`ray start --address`), each with its own --num-cpus, a custom resource `node<i>` and its own --temp-dir,
# all on free ports this script picks. Optionally an `mlflow server` (SQLite store, proxied artifacts) on
# 127.0.0.1. It is how a cluster sweep is tried without a cloud: the same `ray.address: auto` + a shared
# `file://` storage path + an MLflow server, as in docs/cluster.md.
#
#   infra/local_cluster.sh start DIR [--nodes N] [--cpus C | --cpus C0,C1,...] [--gpus G] [--mlflow]
#                                    [--object-store-mb M] [--timeout S]
#   infra/local_cluster.sh status DIR
#   infra/local_cluster.sh stop DIR
#
# `start` prints the address (RAY_ADDRESS=IP:PORT, for `ray.address: auto`) and writes DIR/env.sh to source.
# `stop` stops exactly what `start` started: each `ray start --block` / `mlflow server` runs as the leader of
# its own session (setsid) with R2MU_LOCAL_CLUSTER=DIR in its environment; stop signals those leaders, then
# kills whatever is still ours (see is_ours below). It never runs `ray stop` (that kills every Ray on the host).
#
# Token auth: Ray 2.60 turns token authentication on for a new head; a joining node or a driver that gives an
# address must say so itself. The script makes a token in DIR/auth_token and runs every process with
# RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=DIR/auth_token; a driver needs the same (DIR/env.sh exports them).
#
# Loopback only: every node is on this machine, so every Ray process listens on 127.0.0.1 (GCS, raylets, object
# managers, workers, agents, the client server, the autoscaler monitor) and usage statistics are off. Ray 2.60
# binds loopback only when the node IP is 127.0.0.1, but `ray start --node-ip-address=127.0.0.1` rewrites that
# to the machine's routable IP (services.resolve_ip_for_localhost), and the switch that keeps it
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) makes `ray start --address` refuse to join a second node. So each
# `ray start` runs through RAY_LOOPBACK below: Ray's own CLI with that one rewrite turned off. A driver needs
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 to keep the address 127.0.0.1:PORT as given (DIR/env.sh exports it).
# docs/security.md says what listens where.
#
# Programs: RAY_BIN (default: ray), RAY_PYTHON (default: the interpreter of RAY_BIN's #! line), MLFLOW_BIN
# (default: mlflow), PYTHON (default: python3, stdlib only).
set -Eeuo pipefail  # -E: the ERR trap of `start` also fires inside functions

RAY_BIN=${RAY_BIN:-ray}
RAY_PYTHON=${RAY_PYTHON:-}
MLFLOW_BIN=${MLFLOW_BIN:-mlflow}
PYTHON=${PYTHON:-python3}

die() { echo "local_cluster: $*" >&2; exit 1; }

# `ray start ...` as Ray's CLI runs it, except that 127.0.0.1 given as an address or node IP stays 127.0.0.1
# (Ray 2.60 would replace it with the machine's routable IP, and then bind every interface).
RAY_LOOPBACK='import sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())'

ray_python() {  # the Python that runs RAY_BIN (a console script): RAY_PYTHON, else its #! line (may be `env python3`)
  if [[ -n $RAY_PYTHON ]]; then echo "$RAY_PYTHON"; return; fi
  local bin line
  bin=$(command -v -- "$RAY_BIN") || die "$RAY_BIN not found (set RAY_BIN, or RAY_PYTHON)"
  IFS= read -r line < "$bin" || true
  [[ $line == '#!'*python* ]] || die "cannot tell which Python runs $bin; set RAY_PYTHON"
  echo "${line#\#!}"
}

usage() { sed -n '8,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# N distinct free TCP ports: all bound at once (so they differ), then released for Ray to take.
free_ports() {
  "$PYTHON" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

state_get() { sed -n "s/^$1=//p" "$DIR/state.env" | tail -1; }
state_set() { echo "$1=$2" >> "$DIR/state.env"; }

# Every process `start` launches carries R2MU_LOCAL_CLUSTER=DIR in its environment, and their children inherit
# it. /proc/PID/environ is not proof alone: a process that rewrites its title (Ray's agents) can overwrite it.
# So a process is ours if it carries the mark or its command line names a directory under DIR, and a
# recorded session is ours while one of its members is; never by pid alone.
has_mark() { grep -qxzF -- "R2MU_LOCAL_CLUSTER=$DIR" "/proc/$1/environ" 2>/dev/null; }
names_dir() {  # `ray start --temp-dir=DIR/nodeN`, raylet and GCS paths, `mlflow server ... DIR/mlflow/...`
  [[ -r /proc/$1/cmdline ]] &&
    tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qE -- "$(re "$DIR")/(node[0-9]|mlflow/)"
}
re() { printf '%s' "$1" | sed 's/[][\.^$*+?(){}|]/\\&/g'; }  # DIR as a literal in an extended regex
is_ours() { [[ $1 =~ ^[0-9]+$ ]] && { has_mark "$1" || names_dir "$1"; }; }

# zombies are left out here and in wait_gone: they are dead, only not yet reaped by a parent that is stopping
session_members() { ps -e -o pid=,sid=,stat= | awk -v s="$1" '$2 == s && $3 !~ /^Z/ {print $1}'; }

ours_now() {  # every live process of this cluster
  local f pid sid members m
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    if has_mark "$pid"; then echo "$pid"; fi
  done
  ps -e -o pid=,args= | while read -r pid args; do  # Ray processes name their session directory
    case "$args" in *"$DIR/node"*"/session_"*) echo "$pid" ;; esac
  done
  for sid in $(leaders); do  # the rest of a recorded session, once one of its members is known to be ours
    members=$(session_members "$sid")
    for m in $members; do
      if is_ours "$m"; then echo "$members"; break; fi
    done
  done
}

wait_gone() {  # wait_gone SECONDS PID...: 0 once none of the pids is alive
  local deadline=$((SECONDS + $1)); shift
  while ((SECONDS < deadline)); do
    local alive=0 p
    for p in "$@"; do [[ $(ps -o stat= -p "$p") =~ ^[^Z] ]] && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  return 1
}

leaders() {
  { state_get MLFLOW_PID; state_get WORKER_PIDS | tr ' ' '\n'; state_get HEAD_PID; } | grep -E '^[0-9]+$' || true
}

cmd_stop() {
  [[ -f $DIR/state.env ]] || { echo "nothing recorded in $DIR (not started, or already stopped)"; return 0; }
  local pid m left=() group
  # mlflow and the workers together first, the head last: a raylet outliving its GCS only logs reconnect errors.
  for group in "$(state_get MLFLOW_PID) $(state_get WORKER_PIDS)" "$(state_get HEAD_PID)"; do
    local ours=()
    for pid in $group; do
      is_ours "$pid" || continue  # gone already, or the pid now belongs to someone else
      if [[ $pid == "$(state_get MLFLOW_PID)" ]]; then
        # the whole mlflow session at once: its leader alone takes ~15 s and can orphan its workers
        for m in $(session_members "$pid"); do ours+=("$m"); done  # its leader is ours (checked above)
      else
        ours+=("$pid")  # `ray start --block` tears down its own raylet, GCS and agents on SIGTERM
      fi
    done
    ((${#ours[@]})) || continue
    kill -TERM "${ours[@]}" 2>/dev/null || true
    wait_gone 20 "${ours[@]}" || kill -KILL "${ours[@]}" 2>/dev/null || true
  done
  mapfile -t left < <(ours_now | sort -un)
  if ((${#left[@]})); then
    kill -TERM "${left[@]}" 2>/dev/null || true
    wait_gone 10 "${left[@]}" || kill -KILL "${left[@]}" 2>/dev/null || true
    wait_gone 5 "${left[@]}" || die "could not stop pids: ${left[*]}"
  fi
  mv "$DIR/state.env" "$DIR/state.env.stopped"
  echo "stopped the cluster in $DIR"
}

cmd_status() {
  [[ -f $DIR/state.env ]] || { echo "no cluster recorded in $DIR"; return 3; }
  local pid i=0 rc=0
  echo "RAY_ADDRESS=$(state_get RAY_ADDRESS)"
  for pid in $(state_get HEAD_PID) $(state_get WORKER_PIDS); do
    if is_ours "$pid"; then echo "node$i: pid $pid running ($(session_members "$pid" | wc -l) processes)"
    else echo "node$i: pid $pid NOT running"; rc=1; fi
    i=$((i + 1))
  done
  pid=$(state_get MLFLOW_PID)
  if [[ -n $pid ]]; then
    if is_ours "$pid"; then echo "mlflow: pid $pid running at $(state_get MLFLOW_URI)"
    else echo "mlflow: pid $pid NOT running"; rc=1; fi
  fi
  if ((rc == 0)); then
    # shellcheck disable=SC1091
    (source "$DIR/env.sh" && "$RAY_BIN" status --address "$RAY_ADDRESS") || rc=1
  fi
  return $rc
}

# launch NAME CMD...: CMD as the leader of a new session, output to DIR/logs/NAME.log; prints its pid.
launch() {
  local name=$1; shift
  R2MU_LOCAL_CLUSTER=$DIR setsid "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $!
}

wait_started() {  # wait_started NAME PID: `ray start --block` says "Ray runtime started." once its node is up
  local deadline=$((SECONDS + TIMEOUT))
  until grep -q "Ray runtime started" "$DIR/logs/$1.log" 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || { tail -20 "$DIR/logs/$1.log" >&2; return 1; }
    ((SECONDS < deadline)) || { echo "$1: not up after ${TIMEOUT}s" >&2; tail -20 "$DIR/logs/$1.log" >&2; return 1; }
    sleep 0.2
  done
}

cmd_start() {
  local nodes=2 cpus=1 gpus=0 mlflow=0 store_mb=""
  TIMEOUT=90
  while (($#)); do
    case $1 in
      --nodes) nodes=$2; shift 2 ;;
      --cpus) cpus=$2; shift 2 ;;
      --gpus) gpus=$2; shift 2 ;;
      --mlflow) mlflow=1; shift ;;
      --object-store-mb) store_mb=$2; shift 2 ;;
      --timeout) TIMEOUT=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer"
  local -a cpu_list
  IFS=, read -r -a cpu_list <<< "$cpus"
  ((${#cpu_list[@]} == 1 || ${#cpu_list[@]} == nodes)) || die "--cpus: one value, or one per node ($nodes)"
  if [[ -f $DIR/state.env ]]; then
    for pid in $(leaders); do is_ours "$pid" && die "a cluster is already running in $DIR; stop it first"; done
    mv "$DIR/state.env" "$DIR/state.env.stale"
  fi
  # AF_UNIX socket paths are capped at 107 bytes; Ray's longest is DIR/nodeN/session_<date>_<pid>/sockets/...
  (( ${#DIR} <= 30 )) || die "DIR is ${#DIR} characters; Ray's socket paths under it would pass the 107-byte \
limit: use a short path (e.g. mktemp -d /tmp/rc.XXXX)"
  mkdir -p "$DIR/logs"
  "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token"
  chmod 600 "$DIR/auth_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
  # usage statistics off (Ray's also by --disable-usage-stats); a user's own MLflow setting is kept
  export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}
  : > "$DIR/state.env"
  # from here on, a failure stops whatever was started
  trap 'trap - ERR; echo "local_cluster: start failed; stopping what was started" >&2; cmd_stop >&2; exit 1' ERR

  local -a p
  if ((mlflow)); then  # started first, waited for last: it takes as long to come up as the Ray nodes
    read -r -a p <<< "$(free_ports 1)"
    mkdir -p "$DIR/mlflow"
    local mpid
    # MLflow's server-side job runner (7 huey processes) serves GenAI features the sweep does not use.
    mpid=$(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} launch mlflow \
      "$MLFLOW_BIN" server --host 127.0.0.1 --port "${p[0]}" --workers 1 \
      --backend-store-uri "sqlite:///$DIR/mlflow/mlflow.db" --serve-artifacts \
      --artifacts-destination "$DIR/mlflow/artifacts")
    state_set MLFLOW_PID "$mpid"
    state_set MLFLOW_URI "http://127.0.0.1:${p[0]}"
  fi

  local py_line
  py_line=$(ray_python)  # a failure stops here (set -e), not at the first launch
  local -a ray_py
  read -r -a ray_py <<< "$py_line"
  local -a common=(--block --disable-usage-stats --include-log-monitor=true --node-ip-address=127.0.0.1)
  if [[ -n $store_mb ]]; then common+=(--object-store-memory=$((store_mb * 1024 * 1024))); fi
  read -r -a p <<< "$(free_ports 9)"
  local head_pid
  head_pid=$(launch node0 "${ray_py[@]}" -c "$RAY_LOOPBACK" start --head "${common[@]}" --temp-dir="$DIR/node0" \
    --num-cpus="${cpu_list[0]}" --num-gpus="$gpus" --resources='{"node0": 1}' \
    --port="${p[0]}" --node-manager-port="${p[1]}" --object-manager-port="${p[2]}" \
    --ray-client-server-port="${p[3]}" --dashboard-port="${p[4]}" --dashboard-host=127.0.0.1 \
    --include-dashboard=false --dashboard-agent-listen-port="${p[5]}" --dashboard-agent-grpc-port="${p[6]}" \
    --runtime-env-agent-port="${p[7]}" --metrics-export-port="${p[8]}")
  state_set HEAD_PID "$head_pid"
  wait_started node0 "$head_pid"
  local address
  address=$(cat "$DIR/node0/ray_current_cluster")
  state_set RAY_ADDRESS "$address"
  state_set RAY_CLIENT "ray://${address%:*}:${p[3]}"

  local i worker_pids=() w
  for ((i = 1; i < nodes; i++)); do
    read -r -a p <<< "$(free_ports 6)"
    w=$(launch "node$i" "${ray_py[@]}" -c "$RAY_LOOPBACK" start --address="$address" "${common[@]}" --temp-dir="$DIR/node$i" \
      --num-cpus="${cpu_list[$((${#cpu_list[@]} == 1 ? 0 : i))]}" --num-gpus="$gpus" --resources="{\"node$i\": 1}" \
      --node-manager-port="${p[0]}" --object-manager-port="${p[1]}" --dashboard-agent-listen-port="${p[2]}" \
      --dashboard-agent-grpc-port="${p[3]}" --runtime-env-agent-port="${p[4]}" --metrics-export-port="${p[5]}")
    worker_pids+=("$w")
    state_set WORKER_PIDS "${worker_pids[*]}"  # recorded at once: a failed start still stops it
  done
  for ((i = 1; i < nodes; i++)); do wait_started "node$i" "${worker_pids[$((i - 1))]}"; done

  if ((mlflow)); then
    if ! "$PYTHON" - "$(state_get MLFLOW_URI)" "$(state_get MLFLOW_PID)" "$TIMEOUT" <<'EOF'
import os, sys, time, urllib.request
uri, pid, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        urllib.request.urlopen(uri + "/health", timeout=2).read()
        break
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"mlflow server (pid {pid}) exited")
        if time.monotonic() > deadline:
            sys.exit(f"mlflow server at {uri} did not answer /health")
        time.sleep(0.3)
EOF
    then
      tail -20 "$DIR/logs/mlflow.log" >&2
      false  # -> the ERR trap: stop what was started
    fi
  fi
  trap - ERR

  {
    echo "export RAY_ADDRESS=$address"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"  # keeps 127.0.0.1 in RAY_ADDRESS as it is (see the top)
    echo "export RAY_USAGE_STATS_ENABLED=0"
    echo "export RAY_AUTH_TOKEN_PATH=$DIR/auth_token"
    if ((mlflow)); then echo "export MLFLOW_TRACKING_URI=$(state_get MLFLOW_URI)"; fi
  } > "$DIR/env.sh"
  echo "started $nodes Ray node(s) in $DIR (logs: $DIR/logs)"
  echo "RAY_ADDRESS=$address"
  echo "RAY_CLIENT=$(state_get RAY_CLIENT)"
  if ((mlflow)); then echo "MLFLOW_URI=$(state_get MLFLOW_URI)"; fi
  echo "use it: source $DIR/env.sh; then in the space file ray: {address: auto, storage_path: file://$DIR/shared}"
  if ((mlflow)); then
    echo "        and mlflow: {tracking_uri: $(state_get MLFLOW_URI)}, search.storage: sqlite:///$DIR/optuna.db"
  fi
  echo "stop it: $0 stop $DIR"
}

(($# >= 2)) || usage
cmd=$1
DIR=$(realpath -m -- "$2")
shift 2
case $cmd in
  start) cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
