#!/usr/bin/env bash
# A real, single-node Slurm on localhost, for CI and for trying the job scripts in jobs/slurm/ on a
# laptop. Everything it creates (slurm.conf, munge key and socket, state, spool, logs, pid files)
# lives under DIR, so several can run side by side and removing DIR removes every trace.
#
#   scripts/slurm-local.sh start  DIR   install if missing (root + apt), start munged, slurmctld and
#                                       slurmd, wait until the node is idle, print `export SLURM_CONF=...`
#   scripts/slurm-local.sh status DIR   exit 0 if all three daemons run and the node answers
#   scripts/slurm-local.sh stop   DIR   cancel the jobs, stop exactly the daemons started from DIR
#
#   eval "$(scripts/slurm-local.sh start /tmp/slurm)"; sbatch jobs/slurm/generate.sbatch; squeue
#
# Messages go to stderr; stdout carries only the export line, so `eval "$(... start DIR)"` works.
# Environment: HPCMORPH_NO_APT=1 (never call apt), SLURM_LOCAL_TIMEOUT (seconds to wait for the
# node, default 30).
set -euo pipefail

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() { die "usage: $0 start|stop|status DIR"; }
[[ $# -eq 2 ]] || usage
action=$1
if [[ $action == start ]]; then mkdir -p "$2"; fi
if [[ ! -d $2 ]]; then say "$2: no such directory, nothing runs from it"; [[ $action == stop ]]; exit; fi
dir=$(cd "$2" && pwd -P)
conf=$dir/slurm.conf
timeout=${SLURM_LOCAL_TIMEOUT:-30}
export SLURM_CONF=$conf
# Debian keeps the daemons in /usr/sbin, which a non-login root shell may lack on PATH.
export PATH=$PATH:/usr/sbin:/sbin

# --- pid files: only processes started from DIR are ever signalled ---------------------------
# A pid counts as ours if its pid file is under DIR and the process still runs the expected program
# (a pid recycled since then by something else is left alone).
pid_of() {  # NAME PIDFILE -> the pid, if that process is alive and is NAME
    local pid
    [[ -s $2 ]] || return 1
    pid=$(<"$2")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
    # A killed daemon stays a zombie until init reaps it: that is not running.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    echo "$pid"
}

munge_pid()  { pid_of munged     "$dir/munge/munged.pid"; }
ctld_pid()   { pid_of slurmctld  "$dir/run/slurmctld.pid"; }
slurmd_pid() { pid_of slurmd     "$dir/run/slurmd.pid"; }

node_state() { sinfo -h -N -o '%T' -n localhost 2>/dev/null | head -n1; }

logs() {
    local f
    for f in "$dir/munge/munged.log" "$dir/log/slurmctld.log" "$dir/log/slurmd.log"; do
        [[ -f $f ]] || continue
        printf '\n----- %s (last 30 lines) -----\n' "$f" >&2
        tail -n 30 "$f" >&2
    done
}

# --- install ----------------------------------------------------------------------------------
install() {
    local missing=() p
    for p in munged slurmctld slurmd sbatch; do command -v "$p" >/dev/null || missing+=("$p"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 && -z "${HPCMORPH_NO_APT:-}" ]] && command -v apt-get >/dev/null \
        || die "not installed: ${missing[*]}; as root with apt this script installs slurm-wlm and munge itself"
    say "installing slurm-wlm and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services (a system munged, a slurmd without a conf) from starting.
    local made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    # Recommends would pull ~30 plugin packages, serial HDF5 among them: not wanted beside ours.
    local apt=(apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 slurm-wlm munge)
    # The package lists may be missing (a fresh image) or stale (404s): only then apt-get update.
    local ok=1
    if ! apt-cache show slurm-wlm munge >/dev/null 2>&1 || ! "${apt[@]}" >/dev/null; then
        { apt-get update -qq -o DPkg::Lock::Timeout=300 && "${apt[@]}" >/dev/null; } || ok=
    fi
    if [[ -n $made_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
    [[ -n $ok ]] || die "apt-get could not install slurm-wlm munge"
    for p in munged slurmctld slurmd sbatch; do command -v "$p" >/dev/null || die "apt did not provide $p"; done
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# --- configuration ----------------------------------------------------------------------------
write_conf() {
    local user cpus mem_kb mem_mb def_mem ctld_port slurmd_port
    user=$(id -un)
    cpus=$(nproc)
    # slurmd drains a node configured with more memory than it finds; it finds MemTotal.
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$(( mem_kb / 1024 ))
    # Without a default, one job is given the whole node's memory and the next one waits.
    def_mem=$(( mem_mb / cpus < 1024 ? mem_mb / cpus : 1024 ))
    # Fresh ports each start: two of these (two CI jobs, two checkouts) must not collide on 6817.
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
    cat >"$conf" <<EOF
# Written by scripts/slurm-local.sh for $dir: a single-node cluster on localhost.
ClusterName=hpcmorph-local
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
# Our own munged; cred_expire is also how long a requeued job waits before it may start again
# (120 s by default), which a test of requeue cannot afford.
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd and possibly no writable cgroup tree (containers, CI): track processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
# The main scheduler, run every 5 s: a job requeued at its wall time and started by backfill's
# 30 s cycle got the limit's warning signal again at once (seen here), so it never ran.
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=5
MailProg=/bin/true
# Without slurmdbd there is no sacct: finished jobs must stay in scontrol's view for a while.
MinJobAge=3600
# Short waits: a restart or a requeue here should take seconds, not minutes.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=5
InactiveLimit=0
JobRequeue=1
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# --- daemons ----------------------------------------------------------------------------------
start_munge() {
    munge_pid >/dev/null && return 0
    mkdir -p "$dir/munge"
    chmod 755 "$dir/munge"
    if [[ ! -s $dir/munge/munge.key ]]; then
        # munged accepts a key of 32 bytes to 1 KiB; mungekey is not in every munge release.
        head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    fi
    chmod 400 "$dir/munge/munge.key"
    rm -f "$dir/munge/munge.socket.2" "$dir/munge/munge.socket.2.lock" "$dir/munge/munged.pid"
    # Without --force munged refuses to start below a world-writable directory that lacks the
    # sticky bit (a shared CI workspace, say): it guards a system key, not this throwaway one.
    munged --force \
        --key-file="$dir/munge/munge.key" \
        --socket="$dir/munge/munge.socket.2" \
        --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        || { logs; die "munged did not start"; }
    for _ in $(seq 50); do
        [[ -S $dir/munge/munge.socket.2 ]] && munge_pid >/dev/null && return 0
        sleep 0.1
    done
    logs; die "munged did not come up"
}

start_slurm() {
    mkdir -p "$dir/state" "$dir/spool/slurmd" "$dir/run" "$dir/log"
    # The daemons open their log files only after they have forked, and then write the reason
    # they stopped there; a start that fails before that prints to these files.
    if ! ctld_pid >/dev/null; then
        slurmctld -f "$conf" >>"$dir/log/slurmctld.start" 2>&1 || { cat "$dir/log/slurmctld.start" >&2; logs; die "slurmctld did not start"; }
    fi
    if ! slurmd_pid >/dev/null; then
        slurmd -f "$conf" -N localhost >>"$dir/log/slurmd.start" 2>&1 || { cat "$dir/log/slurmd.start" >&2; logs; die "slurmd did not start"; }
    fi
}

wait_idle() {
    local deadline=$((SECONDS + timeout)) state=
    while (( SECONDS < deadline )); do
        state=$(node_state || true)
        case $state in
            idle|mixed|allocated|completing) return 0 ;;
        esac
        sleep 0.2
    done
    logs
    die "node localhost not idle after ${timeout}s (state: '${state:-no answer from slurmctld}'); logs above, conf $conf"
}

start() {
    install
    if munge_pid >/dev/null && ctld_pid >/dev/null && slurmd_pid >/dev/null && [[ -n $(node_state) ]]; then
        say "already running from $dir"
        wait_idle
    else
        # Start what is missing and leave what runs alone (a running job survives a slurmd
        # restart). Fresh ports only when neither Slurm daemon holds the old ones.
        if [[ ! -f $conf ]] || ! { ctld_pid || slurmd_pid; } >/dev/null; then write_conf; fi
        start_munge
        start_slurm
        wait_idle
        say "up: node localhost $(node_state), conf $conf"
    fi
    echo "export SLURM_CONF=$conf"
}

# Daemons get a few seconds to save their state before they are killed.
kill_wait() {
    local pid=$1 name=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 0
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# slurmstepd daemonises away from slurmd; ours are those holding a file under DIR (their spool
# sockets and logs).
our_stepds() {
    local pid
    for pid in $(pgrep -x slurmstepd); do
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || continue
        if find "/proc/$pid/fd" -lname "$dir/*" 2>/dev/null | grep -q .; then echo "$pid"; fi
    done
}

descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

stop() {
    local pid
    # Cancel the jobs first: their slurmstepd ends them and their processes (TERM, then KILL after
    # KillWait), then exits itself.
    if [[ -f $conf ]] && ctld_pid >/dev/null && munge_pid >/dev/null; then
        scancel --full --quiet --partition=local 2>/dev/null || true
        for _ in $(seq 150); do
            [[ -z $(our_stepds) ]] && break
            sleep 0.1
        done
    fi
    if pid=$(slurmd_pid); then kill_wait "$pid" slurmd; fi
    if pid=$(ctld_pid); then kill_wait "$pid" slurmctld; fi
    # A step whose slurmd or slurmctld was already gone: end its processes by hand.
    for pid in $(our_stepds); do
        # shellcheck disable=SC2046  # one pid per word
        kill -KILL $(descendants "$pid") 2>/dev/null || true
        kill_wait "$pid" slurmstepd
    done
    if pid=$(munge_pid); then kill_wait "$pid" munged; fi
    say "stopped the daemons of $dir"
}

status() {
    local ok=0 name fn pid
    for name in munged slurmctld slurmd; do
        case $name in munged) fn=munge_pid ;; slurmctld) fn=ctld_pid ;; slurmd) fn=slurmd_pid ;; esac
        if pid=$($fn); then say "$name running (pid $pid)"; else say "$name not running"; ok=1; fi
    done
    if [[ $ok -eq 0 ]]; then
        local state
        state=$(node_state || true)
        say "node localhost: ${state:-no answer from slurmctld}"
        [[ -n $state ]] || ok=1
    fi
    if [[ $ok -eq 0 ]]; then echo "export SLURM_CONF=$conf"; fi
    return $ok
}

case $action in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
