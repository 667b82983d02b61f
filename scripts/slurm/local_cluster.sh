#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying scripts/slurm/fit.sbatch:
# munged, slurmctld and slurmd on localhost, run as daemons from a private directory (nothing in /etc
# is read or written: clients find the cluster through SLURM_CONF).
#
#   scripts/slurm/local_cluster.sh start    # install Debian's slurm and munge if missing, start, wait for the node
#   eval "$(scripts/slurm/local_cluster.sh env)"   # SLURM_CONF for sbatch, squeue, scontrol, scancel
#   scripts/slurm/local_cluster.sh status   # daemons, node and queue
#   scripts/slurm/local_cluster.sh stop     # stop the daemons (cancels running jobs); keeps the logs
#
# Environment: FINDLIT_SLURM_DIR (default /tmp/findlit-slurm) holds the configuration, the munge key,
# the daemons' state, pid and log files; FINDLIT_SLURM_PORT (default 16817) is slurmctld's port, slurmd
# listens on the next one. Needs root (the daemons run as root, jobs run as the submitting user).
# Containers often have neither systemd nor a writable cgroup tree, so the configuration uses the
# plugins that need neither: proctrack/linuxproc, task/none, no accounting.
set -euo pipefail

DIR=${FINDLIT_SLURM_DIR:-/tmp/findlit-slurm}
PORT=${FINDLIT_SLURM_PORT:-16817}
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
PACKAGES=(slurmctld slurmd slurm-client munge)
NODE=$(hostname -s)

log() { echo "local_cluster: $*" >&2; }

install_packages() {
    local missing=0
    for tool in slurmctld slurmd sbatch srun scontrol munged; do
        command -v "$tool" >/dev/null || missing=1
    done
    [[ $missing == 0 ]] && return 0
    if [[ $(id -u) != 0 ]]; then
        log "slurm or munge is missing and this is not root: apt-get install ${PACKAGES[*]}"
        exit 1
    fi
    log "installing ${PACKAGES[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    # the package lists may be missing on a fresh machine; the install itself says whether they are
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    mkdir -p "$DIR"/{etc,munge,state/ctld,state/d,log,run}
    # the socket must be reachable by every user who submits jobs; the key stays root-only
    chmod 755 "$DIR/munge"
    if [[ ! -f $DIR/munge/munge.key ]]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    # the node as slurmd sees it (CPUs, sockets, cores, threads, memory)
    local hardware
    hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
    cat >"$CONF" <<EOF
# written by scripts/slurm/local_cluster.sh: a single-node cluster on localhost
ClusterName=findlit
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also holds a requeued job back before it may start again (120 s by default)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# look at pending jobs (a requeued one becoming eligible) every 2 s rather than every minute
SchedulerParameters=sched_interval=2
ReturnToService=2
# a node whose hardware differs from these lines is not drained
SlurmdParameters=config_overrides
# Lightning requeues a job on SIGUSR1 with 'scontrol requeue'
JobRequeue=1
# a finished job stays visible to 'scontrol show job' (there is no accounting database)
MinJobAge=3600
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for_node() {
    local state=""
    for _ in $(seq 1 60); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
        if [[ $state == idle* || $state == mixed* || $state == allocated* ]]; then
            log "node $NODE is $state"
            return 0
        fi
        sleep 1
    done
    log "node $NODE did not come up (state: ${state:-none}); logs in $DIR/log"
    tail -n 20 "$DIR"/log/*.log >&2 || true
    return 1
}

start() {
    install_packages
    if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$DIR/run/slurmd.pid"; then
        log "already running (stop it first to restart)"
        export SLURM_CONF=$CONF
        wait_for_node
        return
    fi
    write_config
    export SLURM_CONF=$CONF
    pid_alive "$DIR/run/munged.pid" ||
        munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
            --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munged.seed"
    # -c: a clean start, no jobs from an earlier cluster in this directory
    slurmctld -c -f "$CONF"
    slurmd -f "$CONF" -N "$NODE"
    wait_for_node
    log "started; use it with: export SLURM_CONF=$CONF"
}

stop_pid() {
    local name=$1 file=$DIR/run/$1.pid
    pid_alive "$file" || { rm -f "$file"; return 0; }
    local pid
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name"; rm -f "$file"; return 0; }
        sleep 0.5
    done
    log "$name ($pid) ignored SIGTERM: SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}

stop() {
    if pid_alive "$DIR/run/slurmctld.pid"; then
        # running jobs are killed rather than left behind without a controller
        SLURM_CONF=$CONF scancel --quiet --user "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
}

status() {
    local code=0
    for name in munged slurmctld slurmd; do
        if pid_alive "$DIR/run/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else
            echo "$name: stopped"
            code=1
        fi
    done
    if [[ $code == 0 ]]; then
        SLURM_CONF=$CONF sinfo -N -l || code=1
        SLURM_CONF=$CONF squeue || code=1
    fi
    return $code
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
