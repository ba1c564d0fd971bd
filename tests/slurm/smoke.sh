#!/usr/bin/env bash
# Smoke test for the private test cluster (tests/slurm/start-cluster.sh must have run).
#
#   tests/slurm/smoke.sh [DIR]        # DIR defaults to /tmp/virnucpro-slurm
#
# Checks: a 4-task GPU array with fake GPUs (CUDA_VISIBLE_DEVICES set), an afterok
# dependent job, final states via sacct (accounting on) or 'squeue -t all', a requeue
# restart (SLURM_RESTART_COUNT), and that 'scancel -s TERM --full' reaches a trap in the
# batch shell.  Prints timings.  Exit status 0 = all good.
set -euo pipefail

DIR="${1:-/tmp/virnucpro-slurm}"
[ -f "$DIR/env.sh" ] || { echo "smoke: $DIR/env.sh missing; run start-cluster.sh first" >&2; exit 1; }
# shellcheck disable=SC1091
source "$DIR/env.sh"

W="$(mktemp -d "$VIRNUCPRO_SLURM_DIR/tmp/smoke.XXXXXX")"
chmod 0777 "$W"
cd "$W"
FAILED=0
now() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
say() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAIL: $*"; FAILED=1; }
ok() { say "ok: $*"; }

# Wait until every job id in "$@" (plain ids, array ids expand to their tasks) is in a
# final state, using 'squeue -t all' (works without accounting).  Timeout 180 s.
FINAL='^(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE)$'
wait_final() {
    local ids deadline states
    ids="$(IFS=,; echo "$*")"
    deadline=$(( $(date +%s) + 180 ))
    while :; do
        states="$(squeue -h -t all -j "$ids" -o %T 2>/dev/null || true)"
        if [ -n "$states" ] && ! grep -Evq "$FINAL" <<<"$states"; then
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { squeue -t all -j "$ids" >&2 || true; return 1; }
        sleep 0.2
    done
}
wait_grep() {  # wait_grep SECONDS PATTERN FILE
    local deadline=$(( $(date +%s) + $1 ))
    until [ -f "$3" ] && grep -q "$2" "$3"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
state_of() { squeue -h -t all -j "$1" -o %T 2>/dev/null | head -n1; }

say "cluster: SLURM_CONF=$SLURM_CONF accounting=$VIRNUCPRO_SLURM_ACCOUNTING workdir=$W"
sinfo

# --------------------------------------------------------------------------- array + dependency
t0=$(now)
AID=$(sbatch --parsable -p gpu --gres=gpu:1 --array=0-3 -J smoke-array \
      -o "$W/array_%A_%a.out" --wrap 'echo $SLURM_ARRAY_TASK_ID $CUDA_VISIBLE_DEVICES')
DID=$(sbatch --parsable -p cpu -J smoke-dep --dependency="afterok:$AID" --kill-on-invalid-dep=yes \
      -o "$W/dep.out" --wrap 'echo dependent ran after $SLURM_JOB_DEPENDENCY')
say "submitted array $AID and dependent $DID"
if wait_final "$AID" && t_array=$(now) && wait_final "$DID"; then
    t1=$(now)
    ok "4-task gpu array done in $(dt "$t0" "$t_array") s, dependent job done after $(dt "$t0" "$t1") s"
else
    fail "array/dependent did not finish in time"
    t1=$(now)
fi
for i in 0 1 2 3; do
    f="$W/array_${AID}_${i}.out"
    line="$(cat "$f" 2>/dev/null || true)"
    if [[ "$line" =~ ^$i\ [0-9]+$ ]]; then
        ok "task $i output: '$line' (task id, CUDA_VISIBLE_DEVICES)"
    else
        fail "task $i output '$line' (expected '$i <gpu index>') in $f"
    fi
done
grep -q '^dependent ran' "$W/dep.out" 2>/dev/null && ok "dependent output: $(cat "$W/dep.out")" \
    || fail "dependent job output missing: $(cat "$W/dep.out" 2>/dev/null)"

st="$(squeue -h -t all -j "$AID,$DID" -o '%i %T' | sort)"
if [ "$(grep -c ' COMPLETED$' <<<"$st")" = 5 ]; then
    ok "squeue -t all: all 5 COMPLETED"
else
    fail "squeue -t all states: $st"
fi

if [ "${VIRNUCPRO_SLURM_ACCOUNTING:-0}" = 1 ]; then
    deadline=$(( $(date +%s) + 60 ))
    while :; do
        acct="$(sacct -n -X -P -j "$AID,$DID" -o JobID,State 2>/dev/null || true)"
        [ "$(grep -c '|COMPLETED$' <<<"$acct")" = 5 ] && break
        if [ "$(date +%s)" -ge "$deadline" ]; then acct="TIMEOUT: $acct"; break; fi
        sleep 0.2
    done
    if [[ "$acct" != TIMEOUT* ]]; then
        ok "sacct shows all 5 COMPLETED $(dt "$t1" "$(now)") s after squeue did: $(tr '\n' ' ' <<<"$acct")"
    else
        fail "sacct: $acct"
    fi
else
    say "accounting off: sacct check skipped"
fi

# --------------------------------------------------------------------------- concurrency
t0=$(now)
CID=$(sbatch --parsable -p cpu -c 1 --array=0-7 -J smoke-sleep -o /dev/null --wrap 'sleep 2')
if wait_final "$CID"; then
    el="$(dt "$t0" "$(now)")"
    # how many tasks ran at the same time (start/end times have 1 s resolution)
    par="$(squeue -h -t all -j "$CID" -o '%S %e' | awk '
        { s[NR] = $1; e[NR] = $2 } END { m = 0
          for (i = 1; i <= NR; i++) { c = 0
            for (j = 1; j <= NR; j++) if (s[j] <= s[i] && e[j] > s[i]) c++
            if (c > m) m = c }
          print m }')"
    ok "8-task 'sleep 2' cpu array done in $el s (up to $par tasks at once; node has $VIRNUCPRO_SLURM_CPUS CPUs)"
else
    fail "8-task sleep array did not finish"
fi

# --------------------------------------------------------------------------- invalid dependency
BAD=$(sbatch --parsable -J smoke-baddep -o /dev/null --wrap 'exit 3')
wait_final "$BAD" || true
KID=$(sbatch --parsable -J smoke-killdep --dependency="afterok:$BAD" --kill-on-invalid-dep=yes \
      -o /dev/null --wrap 'echo should not run')
if wait_final "$KID"; then
    st="$(state_of "$KID")"
    [ "$st" = CANCELLED ] && ok "afterok on a FAILED job + --kill-on-invalid-dep=yes -> $st" \
        || fail "dependent of failed job ended $st (expected CANCELLED)"
else
    fail "dependent of a failed job did not end (kill-on-invalid-dep)"
fi

# --------------------------------------------------------------------------- requeue
RQ=$(sbatch --parsable -J smoke-requeue --requeue --open-mode=append -o "$W/requeue.out" \
     --wrap 'echo "start restart_count=${SLURM_RESTART_COUNT:-0}"; sleep 300')
if wait_grep 60 'restart_count=0' "$W/requeue.out"; then
    t0=$(now)
    scontrol requeue "$RQ"
    if wait_grep 120 'restart_count=1' "$W/requeue.out"; then
        ok "scontrol requeue: job $RQ restarted after $(dt "$t0" "$(now)") s (SLURM_RESTART_COUNT=1); output: $(tr '\n' '|' < "$W/requeue.out")"
    else
        fail "requeued job did not restart: $(cat "$W/requeue.out"); state $(state_of "$RQ")"
    fi
else
    fail "requeue job never started: state $(state_of "$RQ")"
fi
scancel "$RQ" || true

# --------------------------------------------------------------------------- TERM to a trap
TM=$(sbatch --parsable -J smoke-term -o "$W/term.out" \
     --wrap 'trap "echo caught TERM; exit 0" TERM; echo ready; sleep 300 & wait')
if wait_grep 60 ready "$W/term.out"; then
    t0=$(now)
    scancel -s TERM --full "$TM"
    if wait_grep 30 'caught TERM' "$W/term.out" && wait_final "$TM"; then
        ok "scancel -s TERM --full reached the trap in $(dt "$t0" "$(now)") s; job ended $(state_of "$TM")"
    else
        fail "trap not reached: $(cat "$W/term.out"); state $(state_of "$TM")"
        scancel "$TM" || true
    fi
else
    fail "TERM job never started: state $(state_of "$TM")"
fi

if [ "$FAILED" = 0 ]; then
    rm -rf "$W"
    say "ALL OK"
else
    say "FAILED (outputs kept in $W)"
    exit 1
fi
