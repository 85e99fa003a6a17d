#!/usr/bin/env bash
# A local cluster on loopback, to try cluster mode: ZooKeeper, a
# MongoDB-wire server, three JobTrackers and TaskTrackers of two node
# groups, all finding each other through ZooKeeper. Ctrl-C stops it all.
#
#   scripts/cluster.sh           start the cluster and keep it running
#   scripts/cluster.sh --check   start it, run jobs on both node groups,
#                                kill -9 the master, check that another
#                                tracker leads and jobs still run, stop;
#                                exits non-zero (with the logs' tails) on
#                                any failure
#
# Environment:
#   LTS_CLUSTER_ZOOKEEPER=host:port   use this ZooKeeper instead of starting
#                                     one from the Debian package's jar
#                                     (apt-get install zookeeper)
#   LTS_CLUSTER_MONGODB_URI=mongodb://...   use this MongoDB; each run uses a
#                                     database of its own (lts_local_*), left
#                                     in place: drop it when done
#   LTS_CLUSTER_SECANTUSD=PATH        else start this secantusd-py (SecantusDB,
#                                     pip install secantusdb) in memory
#   LTS_CLUSTER_BIN_DIR=DIR           the binaries (default target/debug;
#                                     build them with cargo build --bins)
#   LTS_CLUSTER_KEEP=1                keep the state directory on exit
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$self")/.."

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$self" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--check]" >&2
        exit 2
        ;;
esac

bin_dir="${LTS_CLUSTER_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}"
for b in jobtracker tasktracker jobclient; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "error: $bin_dir/$b is missing; build it with: cargo build --bins" \
            "(or point LTS_CLUSTER_BIN_DIR at the binaries)" >&2
        exit 2
    fi
done

# How long each wait may take before the script gives up.
WAIT_SECS=30
# A short session, so a killed master is replaced within seconds; the
# ZooKeeper server must allow it (tickTime 500 ms or less).
SESSION=2s

state="$(mktemp -d "${TMPDIR:-/tmp}/lts-cluster.XXXXXX")"
cluster="local-$$"
database="lts_local_$(date +%s)_$$"
pids=()
names=()

log() { printf '%s\n' "$*"; }

stop_all() {
    # The cluster's nodes first, while ZooKeeper and MongoDB still answer
    # their goodbyes; then the servers.
    stop_some cluster
    stop_some servers
    pids=()
    names=()
}

# stop_some cluster|servers: SIGTERM to those processes, then SIGKILL to
# any still running after 15 s.
stop_some() {
    local which=$1 i server
    local chosen=()
    for i in "${!names[@]}"; do
        case "${names[$i]}" in zookeeper | secantusdb) server=servers ;; *) server=cluster ;; esac
        [ "$server" = "$which" ] && chosen+=("${pids[$i]}")
    done
    for i in "${chosen[@]}"; do
        kill -TERM "$i" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 15))
    for i in "${chosen[@]}"; do
        while kill -0 "$i" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        kill -KILL "$i" 2>/dev/null || true
        wait "$i" 2>/dev/null || true
    done
}

tails() {
    local f
    for f in "$state"/*.log; do
        [ -e "$f" ] || continue
        printf '\n--- %s (last 25 lines) ---\n' "$(basename "$f")"
        tail -n 25 "$f"
    done
}

finish() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [ -n "${LTS_CLUSTER_MONGODB_URI:-}" ] && [ -n "${mongodb:-}" ]; then
        log "database $database left on $mongodb"
    fi
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
        tails >&2
        log "state kept in $state" >&2
    elif [ "${LTS_CLUSTER_KEEP:-}" = 1 ]; then
        log "state kept in $state"
    else
        rm -rf "$state"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME PROGRAM ARGS...: runs it in the background, logging to
# $state/NAME.log.
start() {
    local name=$1
    shift
    RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$@" >"$state/$name.log" 2>&1 </dev/null &
    pids+=($!)
    names+=("$name")
}

pid_of() {
    local i
    for i in "${!names[@]}"; do
        if [ "${names[$i]}" = "$1" ]; then
            echo "${pids[$i]}"
            return
        fi
    done
}

alive() { kill -0 "$(pid_of "$1")" 2>/dev/null; }

# wait_for WHAT COMMAND...: runs the command until it succeeds, at most
# WAIT_SECS seconds.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@" >/dev/null 2>&1; do
        all_alive
        if [ $SECONDS -ge $deadline ]; then
            fail "$what did not happen within ${WAIT_SECS}s"
        fi
        sleep 0.1
    done
}

# Fails when a process this script started and did not kill has exited.
killed=" "
all_alive() {
    local i
    for i in "${!names[@]}"; do
        case "$killed" in *" ${names[$i]} "*) continue ;; esac
        kill -0 "${pids[$i]}" 2>/dev/null || fail "${names[$i]} exited"
    done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

zk_serving() {
    local host=${1%:*} port=${1##*:} out
    # Read whole before matching: an early exit of grep -q would fail the
    # pipe (pipefail).
    out=$(timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port && echo srvr >&3 && cat <&3" 2>/dev/null) || true
    grep -q '^Mode:' <<<"$out"
}

log "state: $state (removed on exit, kept on failure or with LTS_CLUSTER_KEEP=1)"

# --- ZooKeeper ---
if [ -n "${LTS_CLUSTER_ZOOKEEPER:-}" ]; then
    zookeeper=$LTS_CLUSTER_ZOOKEEPER
    log "ZooKeeper: $zookeeper (given)"
else
    jar=/usr/share/java/zookeeper.jar
    if [ ! -r "$jar" ]; then
        fail "no ZooKeeper: install it (apt-get install zookeeper) or set LTS_CLUSTER_ZOOKEEPER=host:port"
    fi
    zk_port=$(free_port)
    mkdir -p "$state/zookeeper"
    cat >"$state/zookeeper/zoo.cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$state/zookeeper/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons
maxSessionTimeout=60000
EOF
    start zookeeper java -Xmx256m -cp "$jar:/usr/share/java/slf4j-simple.jar" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$state/zookeeper/zoo.cfg"
    zookeeper="127.0.0.1:$zk_port"
    log "ZooKeeper: $zookeeper (started)"
fi
wait_for "ZooKeeper at $zookeeper serving" zk_serving "$zookeeper"

# --- MongoDB ---
if [ -n "${LTS_CLUSTER_MONGODB_URI:-}" ]; then
    mongodb=$LTS_CLUSTER_MONGODB_URI
    log "MongoDB: $mongodb (given), database $database"
elif [ -n "${LTS_CLUSTER_SECANTUSD:-}" ]; then
    [ -x "$LTS_CLUSTER_SECANTUSD" ] || fail "LTS_CLUSTER_SECANTUSD=$LTS_CLUSTER_SECANTUSD is not a program"
    mongo_port=$(free_port)
    start secantusdb "$LTS_CLUSTER_SECANTUSD" --host 127.0.0.1 --port "$mongo_port" --storage-path :memory:
    mongodb="mongodb://127.0.0.1:$mongo_port/"
    wait_for "SecantusDB listening on port $mongo_port" tcp_open 127.0.0.1 "$mongo_port"
    log "MongoDB: $mongodb (SecantusDB, started), database $database"
else
    fail "no MongoDB: set LTS_CLUSTER_MONGODB_URI=mongodb://... or LTS_CLUSTER_SECANTUSD=<path to secantusd-py>"
fi

zk_flags=(--zookeeper "$zookeeper" --cluster "$cluster" --zk-session-timeout "$SESSION")
jobclient() { "$bin_dir/jobclient" "${zk_flags[@]}" "$@"; }

# --- JobTrackers ---
start_jobtracker() {
    local name=$1
    start "$name" "$bin_dir/jobtracker" --listen 127.0.0.1:0 --data-dir "$state/$name" \
        --mongodb "$mongodb" --mongodb-database "$database" --mongodb-instance "$name" \
        --mongodb-lease 3s --heartbeat-interval 500ms "${zk_flags[@]}"
}
log_has() { grep -q -- "$2" "$state/$1.log"; }
for jt in jt1 jt2 jt3; do
    start_jobtracker "$jt"
    wait_for "$jt joining the cluster" log_has "$jt" "joined the cluster"
    alive "$jt" || fail "$jt exited"
    log "JobTracker $jt: $(grep -o 'jobtracker listening on [^ ]*' "$state/$jt.log" | head -n1 | sed 's/.* //')"
done

# --- TaskTrackers: two node groups, two each ---
groups=(reports mail)
for g in "${groups[@]}"; do
    for n in 1 2; do
        start "tt-$g-$n" "$bin_dir/tasktracker" --node-group "$g" --identity "tt-$g-$n" \
            --slots 2 --allow /bin/sh "${zk_flags[@]}"
    done
done

# nodes_json PYTHON-EXPRESSION: true when the expression over `v` (the
# output of `jobclient nodes --json`) holds.
nodes_hold() {
    jobclient nodes --json 2>/dev/null |
        python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if ('"$1"') else 1)'
}
connected_tt() { grep -qsE "TaskTracker connected.* worker=$1( |\$)" "$state"/jt*.log; }
for g in "${groups[@]}"; do
    for n in 1 2; do
        wait_for "TaskTracker tt-$g-$n connecting to a JobTracker" connected_tt "tt-$g-$n"
    done
done
wait_for "every node registered" nodes_hold \
    'v["master"] and sum(n["role"]=="jobtracker" for n in v["nodes"])==3 and sum(n["role"]=="tasktracker" for n in v["nodes"])==4'

log ""
log "cluster $cluster is up; try:"
log "  $bin_dir/jobclient --zookeeper $zookeeper --cluster $cluster nodes"
log "  $bin_dir/jobclient --zookeeper $zookeeper --cluster $cluster submit -g reports -t hello --shell /bin/sh -c 'echo hello'"
log ""
jobclient nodes

if ! $check; then
    log ""
    log "processes (kill -9 or kill one to watch the others take over):"
    for i in "${!names[@]}"; do
        log "  ${names[$i]} pid ${pids[$i]}, log $state/${names[$i]}.log"
    done
    log "Ctrl-C stops everything"
    # Runs until Ctrl-C, saying when a process ends.
    while true; do
        for i in "${!names[@]}"; do
            case "$killed" in *" ${names[$i]} "*) continue ;; esac
            if ! kill -0 "${pids[$i]}" 2>/dev/null; then
                log "${names[$i]} (pid ${pids[$i]}) has exited"
                killed+="${names[$i]} "
            fi
        done
        sleep 1
    done
fi

# --- the check ---
# submit_and_wait TAG: one job per node group, each must succeed.
submit_and_wait() {
    local tag=$1 ids=() g out
    for g in "${groups[@]}"; do
        out=$(jobclient submit -g "$g" -t "$tag-$g" --shell /bin/sh -c "echo $tag on $g") ||
            fail "submit of $tag-$g: $out"
        ids+=("$(awk '$1 == "accepted" { print $2 }' <<<"$out")")
    done
    jobclient wait --timeout "${WAIT_SECS}s" "${ids[@]}" >/dev/null ||
        fail "jobs ${ids[*]} ($tag) did not all succeed:
$(for id in "${ids[@]}"; do jobclient get "$id" 2>&1 | head -n 20; done)"
    log "jobs $tag ran on both node groups: ${ids[*]}"
}

log ""
submit_and_wait before
master=$(jobclient nodes --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["master"] or "")')
[ -n "$master" ] || fail "no master shown"
master_pid=$(pid_of "$master")
[ -n "$master_pid" ] || fail "the master $master is not one of this script's JobTrackers"
log "kill -9 the master $master (pid $master_pid)"
killed+="$master "
kill -KILL "$master_pid"
wait_for "a new master" nodes_hold "v[\"master\"] not in (None, \"$master\")"
log "new master: $(jobclient nodes --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["master"])')"
submit_and_wait after
jobclient nodes
log ""
log "check passed"
