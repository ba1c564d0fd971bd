#!/usr/bin/env bash
# Start a private single-node SLURM cluster (Debian 12, slurm-wlm 22.05) for tests.
#
# Everything (config, keys, state, logs, pid files, database) lives under DIR
# (default /tmp/virnucpro-slurm).  No systemd, no cgroups, no system config is touched.
# See tests/slurm/README.md.
#
#   tests/slurm/start-cluster.sh [--no-accounting] [--fresh] [DIR]
#   source DIR/env.sh            # exports SLURM_CONF and friends
#   tests/slurm/stop-cluster.sh [DIR]
#
# Environment overrides (all optional):
#   VIRNUCPRO_SLURM_CPUS       CPUs declared on the node   (default: max(4, nproc))
#   VIRNUCPRO_SLURM_MEM_MB     RealMemory of the node, MB  (default: 3/4 of MemAvailable)
#   VIRNUCPRO_SLURM_GPUS       number of fake GPUs         (default: 2)
#   VIRNUCPRO_SLURM_PORT_BASE  first of 4 TCP ports: slurmctld, slurmd, slurmdbd, mariadb; refused
#                              when taken (default: 6817, or the first free block of 4 above it
#                              when another cluster or program holds one of them)
#   VIRNUCPRO_SLURM_TIMEOUT    seconds to wait for each daemon / the idle node (default: 90)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

ACCOUNTING=1
FRESH=0
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-accounting) ACCOUNTING=0 ;;
        --accounting) ACCOUNTING=1 ;;
        --fresh) FRESH=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "start-cluster: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) if [ -n "$DIR" ]; then echo "start-cluster: only one DIR allowed" >&2; exit 2; fi
           DIR="$1" ;;
    esac
    shift
done
DIR="${DIR:-/tmp/virnucpro-slurm}"

NODE=vnode
CLUSTER=virnucpro
NGPUS="${VIRNUCPRO_SLURM_GPUS:-2}"
TIMEOUT="${VIRNUCPRO_SLURM_TIMEOUT:-90}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
case ":$PATH:" in *:/usr/bin:*) ;; *) PATH="$PATH:/usr/bin:/bin" ;; esac
export PATH

log() { printf '[start-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[start-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (slurmd has to start jobs; daemons run with SlurmUser=root)"
fi

T0=$(date +%s.%N)

# --------------------------------------------------------------------------- layout
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
ETC="$DIR/etc"; RUN="$DIR/run"; LOG="$DIR/log"; STATE="$DIR/state"
MUNGE_DIR="$DIR/munge"; MUNGE_SOCK="$MUNGE_DIR/run/munge.socket.2"
DB_DIR="$DIR/mariadb"; DB_SOCK="$DB_DIR/run/mysqld.sock"
SLURM_CONF="$ETC/slurm.conf"
export SLURM_CONF
[ ${#DB_SOCK} -lt 100 ] || die "DIR path too long for unix sockets: $DIR"

pid_alive() {  # pid_alive PIDFILE -> 0 if the process named in PIDFILE runs
    local f="$1" p
    [ -s "$f" ] || return 1
    p="$(tr -dc '0-9' < "$f")"
    [ -n "$p" ] || return 1
    # Read /proc directly (procps may be missing); zombies (not yet reaped by init) are dead.
    local st
    st="$(cat "/proc/$p/stat" 2>/dev/null)" || return 1
    st="${st##*) }"
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

cluster_up() {
    [ -f "$DIR/.virnucpro-slurm" ] && [ -f "$SLURM_CONF" ] || return 1
    pid_alive "$RUN/munged.pid" && pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid" || return 1
    if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF"; then
        pid_alive "$RUN/mariadb.pid" && pid_alive "$RUN/slurmdbd.pid" || return 1
    fi
    timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'
}

if cluster_up; then
    running_acct=0
    grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF" && running_acct=1
    log "cluster in $DIR is already up (accounting=$([ $running_acct = 1 ] && echo on || echo off)); nothing to do"
    if [ "$running_acct" != "$ACCOUNTING" ] || [ "$FRESH" = 1 ]; then
        log "note: requested accounting=$([ $ACCOUNTING = 1 ] && echo on || echo off)$([ $FRESH = 1 ] && echo ', --fresh'); run stop-cluster.sh first to change it"
    fi
    [ -f "$DIR/env.sh" ] || die "$DIR/env.sh missing although the cluster is up"
    echo "source $DIR/env.sh"
    exit 0
fi

# Partially running (crashed daemon, earlier failed start): clean up first.
if [ -d "$RUN" ] && ls "$RUN"/*.pid >/dev/null 2>&1; then
    log "cluster in $DIR is not (fully) up; stopping leftovers"
    "$HERE/stop-cluster.sh" "$DIR" || true
fi

if [ "$FRESH" = 1 ]; then
    if [ -f "$DIR/.virnucpro-slurm" ]; then
        log "--fresh: wiping $DIR"
        find "$DIR" -mindepth 1 -delete
    elif [ -n "$(ls -A "$DIR")" ]; then
        die "--fresh: $DIR is not empty and is not a virnucpro-slurm dir; refusing to wipe it"
    fi
fi
if [ ! -f "$DIR/.virnucpro-slurm" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists, is not empty and was not made by this script"
fi
touch "$DIR/.virnucpro-slurm"
chmod 0755 "$DIR"
mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$DIR/dev" "$DIR/tmp"
chmod 0755 "$ETC" "$RUN" "$LOG" "$STATE" "$DIR/dev"
chmod 1777 "$DIR/tmp"
rm -f "$RUN"/*.pid

# --------------------------------------------------------------------------- ports
# Chosen before anything is installed, so that a refusal costs nothing.
if [ -n "${VIRNUCPRO_SLURM_PORT_BASE:-}" ]; then
    PORT_BASE="$VIRNUCPRO_SLURM_PORT_BASE"
    [[ "$PORT_BASE" =~ ^[0-9]+$ ]] && [ "$PORT_BASE" -ge 1 ] && [ "$PORT_BASE" -le 65532 ] \
        || die "VIRNUCPRO_SLURM_PORT_BASE=$PORT_BASE is not a port number between 1 and 65532"
    [ "$(bash "$HERE/free-ports.sh" "$PORT_BASE" 4)" = "$PORT_BASE" ] \
        || die "VIRNUCPRO_SLURM_PORT_BASE=$PORT_BASE: one of TCP ports $PORT_BASE-$((PORT_BASE + 3)) is in use; unset it to have free ports picked, or stop what holds them (another cluster: tests/slurm/stop-cluster.sh ITS_DIR)"
else
    PORT_BASE="$(bash "$HERE/free-ports.sh" 6817 4)" || die "no 4 free TCP ports from 6817 up"
    [ "$PORT_BASE" = 6817 ] || log "TCP ports 6817-6820 are taken (another cluster?); using $PORT_BASE-$((PORT_BASE + 3))"
fi
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))

# --------------------------------------------------------------------------- packages
need_pkgs=()
for c in munged mungekey; do command -v "$c" >/dev/null 2>&1 || { need_pkgs+=(munge); break; }; done
for c in slurmctld slurmd sbatch; do command -v "$c" >/dev/null 2>&1 || { need_pkgs+=(slurm-wlm); break; }; done
if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null 2>&1 || need_pkgs+=(slurmdbd)
    for c in mariadbd mariadb-install-db mariadb; do
        command -v "$c" >/dev/null 2>&1 || { need_pkgs+=(mariadb-server); break; }
    done
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package postinst scripts from starting system-wide daemons (we run our own).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt_install() { apt-get install -y -q -o Dpkg::Options::=--force-confdef \
                        -o Dpkg::Options::=--force-confold "${need_pkgs[@]}"; }
    rc=0
    # apt-get update only when the package lists do not know the packages yet.
    if ! apt-cache show "${need_pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -q || rc=$?
    fi
    apt_install || { apt-get update -q && apt_install; } || rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "apt-get install ${need_pkgs[*]} failed"
fi

show_logs() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "----- tail of $f -----" >&2
        tail -n 30 "$f" >&2
    done
}

wait_for() {  # wait_for DESCRIPTION LOGFILES... -- COMMAND...
    local what="$1"; shift
    local logs=()
    while [ "$1" != "--" ]; do logs+=("$1"); shift; done
    shift
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_logs "${logs[@]}"
            die "timed out after ${TIMEOUT}s waiting for $what"
        fi
        sleep 0.1
    done
}

# Start a daemon fully detached from our stdio (so callers capturing our output never hang).
spawn() {  # spawn LOGFILE COMMAND...
    local out="$1"; shift
    setsid "$@" </dev/null >>"$out" 2>&1 &
}

# --------------------------------------------------------------------------- munge
mkdir -p "$MUNGE_DIR/run"
# munged checks the directories up to / for group/other write access (a sticky /tmp is
# accepted).  The socket dir must be 0755 so that clients can reach the socket.
chmod 0755 "$MUNGE_DIR" "$MUNGE_DIR/run"
if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    mungekey --create --keyfile="$MUNGE_DIR/munge.key" >/dev/null
fi
chmod 0600 "$MUNGE_DIR/munge.key"
spawn "$LOG/munged.out" munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
    --num-threads=4
wait_for "munged" "$LOG/munged.log" "$LOG/munged.out" -- \
    bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'"

# --------------------------------------------------------------------------- sizes
NPROC="$(nproc)"
CPUS="${VIRNUCPRO_SLURM_CPUS:-$(( NPROC > 4 ? NPROC : 4 ))}"
if [ -n "${VIRNUCPRO_SLURM_MEM_MB:-}" ]; then
    MEM="$VIRNUCPRO_SLURM_MEM_MB"
else
    avail_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
    MEM=$(( avail_kb / 1024 * 3 / 4 ))
    [ "$MEM" -ge 1024 ] || MEM=1024
fi
DEF_MEM_PER_CPU=$(( MEM / CPUS ))

for ((i = 0; i < NGPUS; i++)); do
    ln -sfn /dev/null "$DIR/dev/nvidia$i"
done

# --------------------------------------------------------------------------- configs
# Continue job ids after a restart (stop-cluster.sh records the next one; with accounting
# the database knows it too), so ids never repeat within DIR.
FIRST_JOB_ID=1
if [ -s "$STATE/next_job_id" ]; then
    n="$(tr -dc '0-9' < "$STATE/next_job_id")"
    [ -n "$n" ] && [ "$n" -gt 1 ] && FIRST_JOB_ID=$n
fi
if [ "$ACCOUNTING" = 1 ]; then
    ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# For slurmdbd connections this names the munge socket (AuthInfo is not used for them).
AccountingStoragePass=$MUNGE_SOCK
AccountingStorageTRES=gres/gpu"
else
    ACCT_CONF="AccountingStorageType=accounting_storage/none"
fi
GRES_NODE=""
[ "$NGPUS" -gt 0 ] && GRES_NODE="Gres=gpu:$NGPUS"

cat > "$SLURM_CONF" <<EOF
# Generated by tests/slurm/start-cluster.sh -- private single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (+1 s) before it may start again (default 120).
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
TmpFS=$DIR/tmp
# No cgroups / systemd: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
$ACCT_CONF
JobCompType=jobcomp/none
MailProg=/bin/true
# The node declares $CPUS CPUs whatever the hardware has (config_overrides), so that
# several 1-CPU jobs run side by side on a small CI machine.
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
ReturnToService=2
# Reject impossible requests at submit time instead of letting them pend forever.
EnforcePartLimits=ALL
JobRequeue=1
# Keep finished jobs visible to 'squeue -t all' / 'scontrol show job' for a day.
MinJobAge=86400
MaxJobCount=100000
MaxArraySize=100001
KillWait=30
InactiveLimit=0
SlurmdTimeout=300
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1,sched_min_interval=0,batch_sched_delay=0
# Job state is not recovered across restarts (slurmctld -c); job ids continue instead.
FirstJobId=1
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

{
    echo "# Fake GPUs: symlinks to /dev/null (plain files are rejected by slurmd)."
    echo "AutoDetect=off"
    if [ "$NGPUS" -gt 0 ]; then
        echo "NodeName=$NODE Name=gpu File=$DIR/dev/nvidia[0-$((NGPUS - 1))]"
    fi
} > "$ETC/gres.conf"
: > "$ETC/plugstack.conf"

# --------------------------------------------------------------------------- accounting
if [ "$ACCOUNTING" = 1 ]; then
    mkdir -p "$DB_DIR/data" "$DB_DIR/run" "$DB_DIR/tmp"
    chmod 0700 "$DB_DIR"
    if [ ! -s "$DB_DIR/slurm.pass" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$DB_DIR/slurm.pass")
    fi
    DB_PASS="$(cat "$DB_DIR/slurm.pass")"
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        log "initialising MariaDB in $DB_DIR/data"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 \
            || { show_logs "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
    spawn "$LOG/mariadb.out" mariadbd --no-defaults --user=root \
        --datadir="$DB_DIR/data" --socket="$DB_SOCK" --pid-file="$RUN/mariadb.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --tmpdir="$DB_DIR/tmp" --log-error="$LOG/mariadb.log" \
        --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
        --innodb-flush-log-at-trx-commit=2 --innodb-lock-wait-timeout=900 \
        --innodb-doublewrite=0 --skip-log-bin
    wait_for "mariadb" "$LOG/mariadb.log" "$LOG/mariadb.out" -- \
        mariadb-admin --no-defaults -S "$DB_SOCK" -uroot ping
    mariadb --no-defaults -S "$DB_SOCK" -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
    (umask 077; cat > "$ETC/slurmdbd.conf" <<EOF
# Generated by tests/slurm/start-cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    chmod 0600 "$ETC/slurmdbd.conf"
    spawn "$LOG/slurmdbd.out" slurmdbd
    wait_for "slurmdbd" "$LOG/slurmdbd.log" "$LOG/slurmdbd.out" -- \
        timeout 10 sacctmgr -n -P list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    n="$(mariadb --no-defaults -S "$DB_SOCK" -uroot -N -B -e \
        "SELECT COALESCE(MAX(id_job), 0) + 1 FROM slurm_acct_db.${CLUSTER}_job_table" 2>/dev/null || true)"
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$FIRST_JOB_ID" ] && FIRST_JOB_ID=$n
    # No associations are enforced (AccountingStorageEnforce unset): any user may submit;
    # root gets the 'root' account that 'add cluster' creates.
else
    rm -f "$ETC/slurmdbd.conf"
fi

# --------------------------------------------------------------------------- slurm
sed -i "s/^FirstJobId=.*/FirstJobId=$FIRST_JOB_ID/" "$SLURM_CONF"
# -c: start without old jobs (a job that was running at stop would keep the node busy).
spawn "$LOG/slurmctld.out" slurmctld -c -f "$SLURM_CONF"
wait_for "slurmctld" "$LOG/slurmctld.log" "$LOG/slurmctld.out" -- \
    bash -c "timeout 5 scontrol ping | grep -q 'is UP'"
spawn "$LOG/slurmd.out" slurmd -N "$NODE" -f "$SLURM_CONF"
node_idle() {
    local st
    st="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1)"
    [ "$st" = idle ]
}
wait_for "node $NODE to become idle" "$LOG/slurmctld.log" "$LOG/slurmd.log" "$LOG/slurmctld.out" "$LOG/slurmd.out" -- node_idle

# --------------------------------------------------------------------------- env.sh
cat > "$DIR/env.sh" <<EOF
# Generated by tests/slurm/start-cluster.sh -- source me.
export SLURM_CONF="$SLURM_CONF"
export VIRNUCPRO_SLURM_DIR="$DIR"
export VIRNUCPRO_SLURM_ACCOUNTING=$ACCOUNTING
export VIRNUCPRO_SLURM_NODE=$NODE
export VIRNUCPRO_SLURM_CPU_PARTITION=cpu
export VIRNUCPRO_SLURM_GPU_PARTITION=gpu
export VIRNUCPRO_SLURM_GPUS=$NGPUS
export VIRNUCPRO_SLURM_CPUS=$CPUS
export VIRNUCPRO_SLURM_PORTS=$PORT_BASE-$((PORT_BASE + 3))
case ":\$PATH:" in *:/usr/bin:*) ;; *) export PATH="\$PATH:/usr/bin" ;; esac
case ":\$PATH:" in *:/usr/sbin:*) ;; *) export PATH="\$PATH:/usr/sbin" ;; esac
EOF

T1=$(date +%s.%N)
log "cluster up in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s: node $NODE CPUs=$CPUS RealMemory=${MEM}MB gpus=$NGPUS, partitions cpu (default) and gpu, accounting=$([ $ACCOUNTING = 1 ] && echo on || echo off), TCP ports $PORT_BASE-$((PORT_BASE + 3))"
echo "source $DIR/env.sh"
