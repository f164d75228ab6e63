#!/usr/bin/env bash
# A throwaway single-node Slurm on this machine, for pgd's tests and for trying jobs/ by hand.
#
#   jobs/testing/local-slurm.sh start    install (where missing) and start munged, slurmctld and slurmd
#   jobs/testing/local-slurm.sh status   exit 0 when the cluster answers and its node takes jobs
#   jobs/testing/local-slurm.sh env      print `export SLURM_CONF=...` (use: eval "$(... env)")
#   jobs/testing/local-slurm.sh stop     cancel its jobs, stop the daemons it started (packages stay)
#
# Conventions
# - Its files live in one directory, LOCAL_SLURM_DIR (default /var/tmp/pgd-local-slurm): slurm.conf,
#   state, spool, logs, pid files and its munge key. Nothing under /etc is written: the client commands
#   find the cluster through SLURM_CONF (see `env`).
# - munged listens where a real cluster's does, /run/munge/munge.socket.2, so SLURM's PMIx server offers
#   munge security to the ranks as it would there. A munged already answering there is used, not stopped.
# - One node (this host, at 127.0.0.1) with this machine's CPUs (at least 2); partitions `debug` (the
#   default; preempted jobs are requeued after a 15 s grace time) and `urgent` (a higher priority tier:
#   a job there preempts `debug` jobs); MpiDefault=none (jobs say --mpi=pmix); KillWait=15; finished
#   jobs stay visible to `scontrol show job` for 10 minutes; no cgroups, no accounting.
# - Installs with apt-get (tried on Debian 12): slurmctld, slurmd, slurm-client, munge and libpmix-dev
#   (SLURM's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, a name only the -dev package provides).
# - Idempotent: `start` on a running cluster and `stop` on a stopped one change nothing.
# - Exit codes: 0 done (`status`: running); 1 failed, naming the log to read (`status`: not running);
#   2 usage; 3 refused, one line on stderr: it cannot run here (not root, no apt-get, another Slurm).
set -uo pipefail

DIR=${LOCAL_SLURM_DIR:-/var/tmp/pgd-local-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
START_TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}   # seconds for the node to come up
PACKAGES=(slurmctld slurmd slurm-client munge libpmix-dev)
EXIT_FAILED=1 EXIT_USAGE=2 EXIT_REFUSED=3
export SLURM_CONF=$CONF

say() { echo "local-slurm: $*"; }
refuse() { echo "local-slurm: cannot run a local Slurm here: $*" >&2; exit "$EXIT_REFUSED"; }
fail() { echo "local-slurm: error: $*" >&2; exit "$EXIT_FAILED"; }

alive() {  # alive PID: a running process, not a zombie that init has yet to reap
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

pid_alive() {  # pid_alive FILE: the pid written in FILE is a running process
    local pid
    [[ -r $1 ]] && read -r pid <"$1" 2>/dev/null && [[ -n $pid ]] && alive "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

munge_answers() {  # a munged at MUNGE_SOCKET encodes and decodes a credential
    timeout 5 munge -n -S "$MUNGE_SOCKET" 2>/dev/null | timeout 5 unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

node_up() {  # the controller answers and the node takes jobs
    local state
    state=$(timeout 10 sinfo --noheader --format=%t --nodes="$NODE" 2>/dev/null | head -n 1)
    [[ $state == idle* || $state == mix* || $state == alloc* ]]
}

running() { pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && munge_answers && node_up; }

installed() {  # the daemons, the clients, and the PMIx library where Debian's plugin looks for it
    command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged \
        && compgen -G "/usr/lib/*/pmix2/lib/libpmix.so"
}

install_packages() {
    installed >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 \
        || refuse "Slurm is not installed and there is no apt-get to install it (${PACKAGES[*]})"
    say "installing ${PACKAGES[*]} with apt-get"
    local log=$DIR/apt-get.log
    # no endless waits: for an unreachable mirror, or for another apt-get holding the lock
    local options=(-q -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o DPkg::Lock::Timeout=60)
    local apt=(apt-get install -y "${options[@]}" --no-install-recommends -o Dpkg::Options::=--force-confold
               "${PACKAGES[@]}")
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$log" 2>&1; then  # package lists missing or stale
        DEBIAN_FRONTEND=noninteractive apt-get update "${options[@]}" >>"$log" 2>&1
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$log" 2>&1 || fail "apt-get failed, see $log"
    fi
    installed >/dev/null 2>&1 \
        || fail "apt-get installed ${PACKAGES[*]}, but slurmctld, slurmd, sbatch, munged or libpmix.so is missing"
}

write_config() {
    local cpus
    cpus=$(nproc)
    # two ranks at least (SlurmdParameters=config_overrides accepts more CPUs than there are)
    (( cpus < 2 )) && cpus=2
    mkdir -p "$DIR/ctld" "$DIR/spool"
    : >"$DIR/plugstack.conf"  # none of the system's SPANK plugins
    cat >"$CONF" <<EOF
# Written by jobs/testing/local-slurm.sh: a throwaway single-node cluster (see that script).
ClusterName=pgdlocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
KillWait=15
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=15
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

start_munged() {
    munge_answers && return 0
    local key=$DIR/munge.key
    if [[ ! -s $key ]]; then
        (umask 077 && dd if=/dev/urandom of="$key" bs=1024 count=1 status=none) || fail "cannot write $key"
    fi
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    munged --force --key-file="$key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" >>"$DIR/munged.log" 2>&1 \
        || fail "munged did not start, see $DIR/munged.log"
    munge_answers || fail "munged does not answer at $MUNGE_SOCKET, see $DIR/munged.log"
}

start() {
    [[ $(id -u) == 0 ]] || refuse "it needs root (to install packages and run slurmd), and this is uid $(id -u)"
    if running; then
        say "running (SLURM_CONF=$CONF)"
        return 0
    fi
    mkdir -p "$DIR" || refuse "cannot create $DIR"
    stop_daemons quiet  # whatever an earlier start left half-running
    local port
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        port_open "$port" && refuse "port $port is in use (another Slurm on this machine?)"
    done
    install_packages
    write_config
    start_munged
    rm -f "$DIR/slurmctld.log" "$DIR/slurmd.log"
    slurmctld -c >>"$DIR/slurmctld.log" 2>&1 || fail "slurmctld did not start, see $DIR/slurmctld.log"
    slurmd >>"$DIR/slurmd.log" 2>&1 || fail "slurmd did not start, see $DIR/slurmd.log"
    local waited=0
    until node_up; do
        (( waited >= START_TIMEOUT * 4 )) \
            && fail "the node is not up after $START_TIMEOUT s, see $DIR/slurmctld.log and $DIR/slurmd.log"
        sleep 0.25
        waited=$((waited + 1))
    done
    say "running: node $NODE with $(sinfo --noheader --format=%c --nodes="$NODE") CPUs, partitions debug" \
        "(default) and urgent; export SLURM_CONF=$CONF"
}

stop_daemons() {  # stop_daemons quiet|loud: cancel the jobs, stop slurmd, slurmctld and our munged
    local name pid waited
    if pid_alive "$DIR/slurmctld.pid"; then
        timeout 10 scancel --quiet --partition=debug,urgent >/dev/null 2>&1
        for (( waited = 0; waited < 60; waited++ )); do  # KillWait (15 s) at most, then SIGKILL
            [[ -z $(timeout 5 squeue --noheader --states=running,completing --format=%i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    for name in slurmd slurmctld munged; do
        pid_alive "$DIR/$name.pid" || continue
        read -r pid <"$DIR/$name.pid"
        kill -TERM "$pid" 2>/dev/null
        for (( waited = 0; waited < 100; waited++ )); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && kill -KILL "$pid"
        rm -f "$DIR/$name.pid"
        [[ $1 == quiet ]] || say "stopped $name"
    done
}

case "${1:-}" in
    start|stop|status) NODE=$(hostname -s) ;;
    env) echo "export SLURM_CONF=$CONF"; exit 0 ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit "$EXIT_USAGE" ;;
esac
case "$1" in
    start) start ;;
    stop)
        [[ $(id -u) == 0 ]] || refuse "it needs root, and this is uid $(id -u)"
        stop_daemons loud
        say "stopped (packages stay installed; logs in $DIR)" ;;
    status)
        if running; then say "running (SLURM_CONF=$CONF)"; else say "not running"; exit "$EXIT_FAILED"; fi ;;
esac
