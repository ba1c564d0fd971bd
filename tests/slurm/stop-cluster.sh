#!/usr/bin/env bash
# Stop the private test cluster started by tests/slurm/start-cluster.sh in DIR
# (default /tmp/virnucpro-slurm): running jobs, slurmd, slurmctld, slurmdbd, mariadb, munged.
# Only processes named in DIR/run/*.pid (and the job steps of that slurmd) are touched.
# Idempotent: stopping a stopped cluster is fine.  State, database and logs are kept
# (start-cluster.sh --fresh wipes them).
#
#   tests/slurm/stop-cluster.sh [DIR]
set -euo pipefail

case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
DIR="${1:-/tmp/virnucpro-slurm}"
if [ ! -d "$DIR" ]; then
    echo "[stop-cluster] $DIR does not exist; nothing to stop"
    exit 0
fi
DIR="$(cd "$DIR" && pwd -P)"
RUN="$DIR/run"

log() { printf '[stop-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

read_pid() {  # read_pid NAME -> pid if DIR/run/NAME.pid names a live process running EXE
    local f="$RUN/$1.pid" exe="$2" p
    [ -s "$f" ] || return 1
    p="$(tr -dc '0-9' < "$f")"
    [ -n "$p" ] && is_running "$p" || return 1
    # Guard against pid reuse: the process must be the expected program.
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q "$exe" || return 1
    echo "$p"
}

proc_stat() {  # proc_stat PID -> "STATE PPID ..." (fields after the command name)
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    echo "${st##*) }"
}

descendants() {  # descendants PID... -> all their descendant pids (one /proc scan)
    local d c f
    local -A kids=()
    for d in /proc/[0-9]*; do
        c="${d#/proc/}"
        f="$(proc_stat "$c")" || continue
        f="${f#* }"; f="${f%% *}"
        kids[$f]="${kids[$f]:-} $c"
    done
    local todo=("$@") p
    while [ ${#todo[@]} -gt 0 ]; do
        p="${todo[0]}"; todo=("${todo[@]:1}")
        for c in ${kids[$p]:-}; do echo "$c"; todo+=("$c"); done
    done
}

is_running() {  # a zombie counts as gone (some container inits reap only every ~2 s)
    local st
    st="$(proc_stat "$1")" || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

wait_gone() {  # wait_gone SECONDS PID... -> 0 when all gone
    local deadline=$(( $(date +%s) + $1 )); shift
    local p alive
    while :; do
        alive=0
        for p in "$@"; do is_running "$p" && alive=1; done
        [ "$alive" = 0 ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

stop_one() {  # stop_one NAME EXE [GRACE]
    local name="$1" exe="$2" grace="${3:-15}" p
    if p="$(read_pid "$name" "$exe")"; then
        kill -TERM "$p" 2>/dev/null || true
        if ! wait_gone "$grace" "$p"; then
            log "$name ($p) did not exit after ${grace}s; killing"
            kill -KILL "$p" 2>/dev/null || true
            wait_gone 5 "$p" || true
        fi
        log "stopped $name ($p)"
    fi
    rm -f "$RUN/$name.pid"
}

# 0. Remember the next job id (start-cluster.sh continues from it; -c drops job state).
if [ -f "$DIR/etc/slurm.conf" ] && read_pid slurmctld slurmctld >/dev/null; then
    max="$(SLURM_CONF="$DIR/etc/slurm.conf" timeout 10 squeue -h -t all -o %A 2>/dev/null \
           | sort -n | tail -n1 || true)"
    if [[ "$max" =~ ^[0-9]+$ ]]; then
        echo $((max + 1)) > "$DIR/state/next_job_id"
    fi
fi

# 1. Job steps of this cluster: slurmstepd clears its environment, but it inherits the
#    working directory of our slurmd (DIR/log).  Kill them and everything below them.
steps=()
for d in /proc/[0-9]*; do
    p="${d#/proc/}"
    [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
    cwd="$(readlink "$d/cwd" 2>/dev/null || true)"
    case "$cwd/" in "$DIR"/*) steps+=("$p") ;; esac
done
if [ ${#steps[@]} -gt 0 ]; then
    victims=("${steps[@]}" $(descendants "${steps[@]}"))
    log "killing ${#steps[@]} job step daemon(s) and their processes (${#victims[@]} in all)"
    kill -KILL "${victims[@]}" 2>/dev/null || true
    wait_gone 5 "${victims[@]}" || true
fi

# 2. Daemons, in dependency order.
stop_one slurmd slurmd
stop_one slurmctld slurmctld
stop_one slurmdbd slurmdbd
stop_one mariadb mariadbd 60
stop_one munged munged
log "cluster in $DIR is stopped"
