#!/usr/bin/env bash
# A real Slurm on one machine, for CI and for trying the job scripts in jobs/slurm/ on a laptop:
# one node on localhost (the default), or several nodes, each in network, UTS (host name) and mount
# namespaces of its own, joined by veth links. Everything it creates (slurm.conf, munge key and
# socket, state, spool, logs, pid files, the nodes' private folders) lives under DIR, so several
# can run side by side and removing DIR (after stop) removes every trace.
#
#   scripts/slurm-local.sh start  DIR [--nodes N]  install if missing (root + apt), start munged,
#                                       slurmctld and the nodes' slurmd, wait until every node is
#                                       idle, print `export SLURM_CONF=...`
#   scripts/slurm-local.sh status DIR   exit 0 if every daemon runs and every node answers
#   scripts/slurm-local.sh stop   DIR   cancel the jobs, stop exactly the daemons started from DIR;
#                                       with nodes, also every process on them, their namespaces
#                                       and links
#   scripts/slurm-local.sh exec   DIR NODE CMD...   run CMD on NODE (in its namespaces), like ssh
#   scripts/slurm-local.sh kill-node DIR NODE       the node fails: every process on it is killed
#                                       (slurmd, job steps, ranks); `start DIR` boots it again
#
#   eval "$(scripts/slurm-local.sh start /tmp/slurm)"; sbatch jobs/slurm/generate.sbatch; squeue
#
# With --nodes N (2 to 16; root, iproute2, util-linux): node1 ... nodeN. Each node is a network
# namespace holding one end of a veth pair (eth0, 169.254.S.10+k/24) and a UTS and mount namespace
# (host name nodek; private /run, /tmp, /dev/shm; its own /etc/hosts naming every node, and Open
# MPI's site settings: TCP between nodes, on that subnet). The other ends meet on a bridge in a
# "fabric" namespace; slurmctld and munged stay in the root namespace, which reaches the nodes over
# one more veth pair holding 169.254.S.1. S is drawn from DIR's path: never 0, 169 or 255, nor a
# /24 that an address or route of this machine already uses. The addresses are link-local and exist
# only on links this script made, so nothing leaves the machine. Everything else is shared, as a cluster's parallel file
# system is: DIR and every path outside /run, /tmp and /dev/shm. A job's working folder must
# therefore be outside /tmp (or under DIR): the nodes' /tmp is their own. Slurm's clients (sbatch,
# squeue, scontrol, scancel, srun) work from the root namespace with the printed SLURM_CONF.
#
# Messages go to stderr; stdout carries only the export line, so `eval "$(... start DIR)"` works.
# Environment: HPCMORPH_NO_APT=1 (never call apt), SLURM_LOCAL_TIMEOUT (seconds to wait for the
# nodes, default 30).
set -euo pipefail

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() { die "usage: $0 start DIR [--nodes N] | stop DIR | status DIR | exec DIR NODE CMD... | kill-node DIR NODE"; }
[[ $# -ge 2 ]] || usage
action=$1
target=$2
shift 2
want_nodes=
case $action in
    start)
        while [[ $# -gt 0 ]]; do
            case $1 in
                --nodes) [[ $# -ge 2 ]] || usage; want_nodes=$2; shift 2 ;;
                --nodes=*) want_nodes=${1#--nodes=}; shift ;;
                *) usage ;;
            esac
        done
        if [[ -n $want_nodes ]] && ! [[ $want_nodes =~ ^[0-9]+$ && $want_nodes -ge 1 && $want_nodes -le 16 ]]; then
            die "--nodes $want_nodes: expected a whole number from 1 to 16"
        fi
        mkdir -p "$target" ;;
    stop|status) [[ $# -eq 0 ]] || usage ;;
    exec) [[ $# -ge 2 ]] || usage ;;
    kill-node) [[ $# -eq 1 ]] || usage ;;
    *) usage ;;
esac
if [[ ! -d $target ]]; then say "$target: no such directory, nothing runs from it"; [[ $action == stop ]]; exit; fi
dir=$(cd "$target" && pwd -P)
conf=$dir/slurm.conf
layout=$dir/cluster  # the cluster's shape, written by the first start: nodes=N, net=169.254.S, ident=...
timeout=${SLURM_LOCAL_TIMEOUT:-30}
export SLURM_CONF=$conf
# Debian keeps the daemons in /usr/sbin, which a non-login root shell may lack on PATH.
export PATH=$PATH:/usr/sbin:/sbin

nodes=1 net='' ident=''
if [[ -f $layout ]]; then
    while IFS='=' read -r key value; do
        case $key in nodes) nodes=$value ;; net) net=$value ;; ident) ident=$value ;; esac
    done <"$layout"
fi
multi() { [[ $nodes -gt 1 ]]; }

# --- names: everything this script makes outside DIR is named after DIR ----------------------
# ident: 6 hex digits of DIR's path; interface names have at most 15 characters.
set_names() {
    fabric=hpcmorph-$ident-fabric  # the namespace holding the bridge every node's link plugs into
    ctl_if=hm${ident}c             # the root namespace's end of the controller's link
    ctl_peer=hm${ident}f           # its other end, on the bridge
}
node_ns()   { echo "hpcmorph-$ident-node$1"; }
node_link() { echo "hm${ident}n$1"; }  # the fabric's end of node K's link (the node's end is its eth0)
node_dir()  { echo "$dir/nodes/node$1"; }
node_addr() { echo "$net.$((10 + $1))"; }
[[ -z $ident ]] || set_names

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
# One node: slurmd's pid file is in DIR/run; node K's is in its own run folder.
slurmd_pid() {
    if multi; then pid_of slurmd "$(node_dir "$1")/run/slurmd.pid"; else pid_of slurmd "$dir/run/slurmd.pid"; fi
}
# Node K's namespaces are held open by one process (a `sleep infinity` started in them): its "init".
holder_pid() {
    local pid ns
    ns=/run/netns/$(node_ns "$1")
    pid=$(pid_of sleep "$(node_dir "$1")/node.pid") || return 1
    [[ -e $ns ]] || return 1
    [[ $(readlink "/proc/$pid/ns/net") == "net:[$(stat -L -c %i "$ns")]" ]] || return 1
    echo "$pid"
}

node_names() {
    if multi; then seq -f 'node%g' "$nodes"; else echo localhost; fi
}
node_number() {  # NODE -> K, or fail
    [[ $1 =~ ^node([0-9]+)$ ]] && (( BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= nodes )) || return 1
    echo "${BASH_REMATCH[1]}"
}
# "node1 idle" lines, one per node slurmctld knows.
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

logs() {
    local f
    for f in "$dir/munge/munged.log" "$dir/log/slurmctld.log" "$dir"/log/slurmd*.log "$dir"/log/node*.boot; do
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

# Several nodes need root (namespaces, links) and the tools that make them.
check_multi() {
    [[ $(id -u) -eq 0 ]] || die "--nodes $nodes: only root can make the nodes' network, UTS and mount namespaces"
    local p
    for p in ip unshare nsenter setsid; do
        command -v "$p" >/dev/null || die "--nodes $nodes: $p not found (iproute2, util-linux)"
    done
    case $dir in
        /run|/run/*|/dev/shm|/dev/shm/*) die "$dir: under a folder each node has its own of; choose DIR elsewhere" ;;
    esac
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the cluster's shape: nodes, link-local subnet, names -------------------------------------
# 169.254.S.0/24 with S drawn from DIR's path: never 0 or 255 (reserved by RFC 3927), nor 169
# (169.254.169.254 is a cloud's metadata service), nor a /24 any address or route of this machine
# already uses (another cluster started by this script, say).
pick_net() {
    local start s i used
    used=$( { ip -4 -o addr show; ip -4 route show table all; } 2>/dev/null \
        | grep -oE '169\.254\.[0-9]+\.' | sort -u || true)
    start=$(( 16#${ident:0:4} % 254 + 1 ))
    for i in $(seq 0 253); do
        s=$(( (start - 1 + i) % 254 + 1 ))
        [[ $s -ne 169 ]] || continue
        grep -qxF "169.254.$s." <<<"$used" && continue
        echo "169.254.$s"
        return 0
    done
    die "no free 169.254.x.0/24 left on this machine"
}

write_layout() {
    nodes=${want_nodes:-1}
    ident=$(printf '%s' "$dir" | sha1sum | cut -c1-6)
    set_names
    net=
    if multi; then net=$(pick_net); fi
    printf 'nodes=%s\nnet=%s\nident=%s\n' "$nodes" "$net" "$ident" >"$layout"
}

# --- configuration ----------------------------------------------------------------------------
write_conf() {
    local user cpus mem_kb mem_mb node_mem def_mem ctld_port slurmd_port ctld_host k
    user=$(id -un)
    cpus=$(nproc)
    # slurmd drains a node configured with more memory than it finds; it finds MemTotal. Nodes
    # on one machine share it: each is given its share.
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$(( mem_kb / 1024 ))
    node_mem=$(( mem_mb / nodes ))
    # Without a default, one job is given the whole node's memory and the next one waits.
    def_mem=$(( node_mem / cpus < 1024 ? node_mem / cpus : 1024 ))
    # Fresh ports each start: two of these (two CI jobs, two checkouts) must not collide on 6817.
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
    # slurmctld runs only where SlurmctldHost names this host; "localhost" always does. With nodes,
    # the address in parentheses is where every client (on a node or here) reaches it.
    ctld_host=localhost
    if multi; then ctld_host="localhost($net.1)"; fi
    {
        if multi; then
            echo "# Written by scripts/slurm-local.sh for $dir: $nodes nodes in namespaces of their own on $net.0/24."
        else
            echo "# Written by scripts/slurm-local.sh for $dir: a single-node cluster on localhost."
        fi
        cat <<EOF
ClusterName=hpcmorph-local
SlurmctldHost=$ctld_host
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
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
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
KillWait=5
InactiveLimit=0
JobRequeue=1
EOF
        if multi; then
            cat <<EOF
# Each node's own folders (%n: its name), its log beside the others.
SlurmdSpoolDir=$dir/nodes/%n/spool
SlurmdPidFile=$dir/nodes/%n/run/slurmd.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
# A node that stops answering is declared DOWN after 20 s (its jobs requeued or failed), not 60 s.
SlurmdTimeout=20
EOF
            for k in $(seq "$nodes"); do
                echo "NodeName=node$k NodeHostname=node$k NodeAddr=$(node_addr "$k") CPUs=$cpus RealMemory=$node_mem State=UNKNOWN"
            done
            echo "PartitionName=local Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
        else
            cat <<EOF
SlurmdSpoolDir=$dir/spool/slurmd
SlurmdPidFile=$dir/run/slurmd.pid
SlurmdLogFile=$dir/log/slurmd.log
SlurmdTimeout=60
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
        fi
    } >"$conf"
    if multi; then write_node_files; fi
}

# What every node sees in place of the machine's own files: /etc/hosts naming the nodes (Slurm's
# srun, Open MPI and Gloo resolve a node's own name to find its address), and Open MPI's site
# settings, as a cluster's admin sets them on its compute nodes: ob1 over TCP between nodes
# (shared memory within one), on the cluster's link only (not lo).
write_node_files() {
    local k
    {
        echo "# Written by scripts/slurm-local.sh: /etc/hosts on the nodes of $dir"
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "$net.1 slurmctld"
        for k in $(seq "$nodes"); do echo "$(node_addr "$k") node$k"; done
    } >"$dir/hosts"
    {
        if [[ -f /etc/openmpi/openmpi-mca-params.conf ]]; then
            grep -vE '^[[:space:]]*(btl|pml|btl_tcp_if_include|oob_tcp_if_include)[[:space:]]*=' \
                /etc/openmpi/openmpi-mca-params.conf || true
        fi
        echo "# scripts/slurm-local.sh: ranks on different nodes talk TCP over the cluster's link"
        echo "btl = tcp,vader,self"
        echo "pml = ob1"
        echo "btl_tcp_if_include = $net.0/24"
        echo "oob_tcp_if_include = $net.0/24"
    } >"$dir/openmpi-mca-params.conf"
}

# --- the nodes' network -----------------------------------------------------------------------
net_up() {
    local k ns link
    if [[ ! -e /run/netns/$fabric ]]; then
        ip netns add "$fabric"
        ip -n "$fabric" link set lo up
        ip -n "$fabric" link add br0 type bridge
        ip -n "$fabric" link set br0 up
    fi
    if ! ip link show "$ctl_if" >/dev/null 2>&1; then
        ip link add "$ctl_if" type veth peer name "$ctl_peer" netns "$fabric"
        ip -n "$fabric" link set "$ctl_peer" master br0 up
        ip addr add "$net.1/24" dev "$ctl_if"
        ip link set "$ctl_if" up
    fi
    for k in $(seq "$nodes"); do
        ns=$(node_ns "$k")
        link=$(node_link "$k")
        [[ -e /run/netns/$ns ]] && continue
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$fabric" link add "$link" type veth peer name eth0 netns "$ns"
        ip -n "$fabric" link set "$link" master br0 up
        ip -n "$ns" addr add "$(node_addr "$k")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

# Runs as node K's first process, in its fresh UTS and mount namespaces: names the node, gives it
# its own /run, /tmp and /dev/shm, then holds the namespaces open.
node_init='set -euo pipefail
name=$1 dir=$2 nd=$3
hostname "$name"
mount --bind "$nd/run" /run
if [[ $dir == /tmp/* ]]; then
    # DIR stays visible at its own path on top of the node own /tmp.
    mkdir -p "$nd/tmp/${dir#/tmp/}"
    mount --bind "$dir" "$nd/tmp/${dir#/tmp/}"
    mount --rbind "$nd/tmp" /tmp
else
    mount --bind "$nd/tmp" /tmp
fi
mount -t tmpfs -o mode=1777 shm /dev/shm
mount --bind "$dir/hosts" /etc/hosts
if [[ -f /etc/openmpi/openmpi-mca-params.conf ]]; then
    mount --bind "$dir/openmpi-mca-params.conf" /etc/openmpi/openmpi-mca-params.conf
fi
echo $$ >"$nd/node.pid"
exec sleep infinity'

node_boot() {  # K: start node K's namespaces (a no-op if they are up)
    local k=$1 nd
    holder_pid "$k" >/dev/null && return 0
    nd=$(node_dir "$k")
    mkdir -p "$nd/run" "$nd/tmp" "$nd/spool" "$dir/log"
    chmod 1777 "$nd/tmp"
    rm -f "$nd/node.pid"
    # nsenter, not `ip netns exec`: that mounts a sysfs of the namespace's own over /sys, without
    # the cgroup file systems slurmd needs to start (seen: "No filesystem mounted on /sys/fs/cgroup").
    setsid nsenter --net="/run/netns/$(node_ns "$k")" unshare --uts --mount --propagation private \
        bash -c "$node_init" node-init "node$k" "$dir" "$nd" </dev/null >>"$dir/log/node$k.boot" 2>&1 &
    for _ in $(seq 50); do
        holder_pid "$k" >/dev/null && return 0
        sleep 0.1
    done
    logs; die "node$k did not boot (its namespaces: $dir/log/node$k.boot)"
}

on_node() {  # K CMD...: run CMD in node K's namespaces
    local k=$1 pid
    shift
    pid=$(holder_pid "$k") || die "node$k is not running (start DIR boots it)"
    nsenter -t "$pid" -n -u -m -- "$@"
}

# The pids of the processes in node K's network namespace: whatever runs on that node.
node_procs() {
    local k=$1 ns want p
    ns=/run/netns/$(node_ns "$k")
    [[ -e $ns ]] || return 0
    want="net:[$(stat -L -c %i "$ns")]"
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/ns/net" 2>/dev/null) == "$want" ]] && echo "${p#/proc/}"
    done
    return 0
}

kill_node() {  # K: every process on node K, TERM then KILL
    local k=$1 pids
    pids=$(node_procs "$k")
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086  # a list of pids
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 30); do
        pids=$(node_procs "$k")
        [[ -n $pids ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -n $(node_procs "$k") ]] || return 0
        sleep 0.1
    done
}

net_down() {
    local k
    for k in $(seq "$nodes"); do
        if [[ -e /run/netns/$(node_ns "$k") ]]; then ip netns del "$(node_ns "$k")"; fi
    done
    if [[ -e /run/netns/$fabric ]]; then ip netns del "$fabric"; fi
    # Deleting the fabric namespace deletes its link ends and with them their peers; in case not:
    if ip link show "$ctl_if" >/dev/null 2>&1; then ip link del "$ctl_if"; fi
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
    # One munged serves every node: its socket is under DIR, which every node sees.
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
    local k
    mkdir -p "$dir/state" "$dir/run" "$dir/log"
    # The daemons open their log files only after they have forked, and then write the reason
    # they stopped there; a start that fails before that prints to these files.
    if ! ctld_pid >/dev/null; then
        slurmctld -f "$conf" >>"$dir/log/slurmctld.start" 2>&1 || { cat "$dir/log/slurmctld.start" >&2; logs; die "slurmctld did not start"; }
    fi
    if ! multi; then
        mkdir -p "$dir/spool/slurmd"
        if ! slurmd_pid >/dev/null; then
            slurmd -f "$conf" -N localhost >>"$dir/log/slurmd.start" 2>&1 || { cat "$dir/log/slurmd.start" >&2; logs; die "slurmd did not start"; }
        fi
        return 0
    fi
    for k in $(seq "$nodes"); do
        node_boot "$k"
        if ! slurmd_pid "$k" >/dev/null; then
            on_node "$k" slurmd -f "$conf" -N "node$k" >>"$dir/log/slurmd-node$k.start" 2>&1 \
                || { cat "$dir/log/slurmd-node$k.start" >&2; logs; die "slurmd of node$k did not start"; }
        fi
    done
}

# Every node in a state that takes or runs jobs.
all_up() {
    local states name state n=0
    states=$(node_states) || return 1
    while read -r name state; do
        case $state in
            idle|mixed|allocated|completing) n=$((n + 1)) ;;
            *) return 1 ;;
        esac
    done <<<"$states"
    [[ $n -eq $nodes ]]
}

wait_idle() {
    local deadline=$((SECONDS + timeout))
    while (( SECONDS < deadline )); do
        all_up && return 0
        sleep 0.2
    done
    logs
    die "nodes not idle after ${timeout}s ($(node_states | tr '\n' ' ' || true)); logs above, conf $conf"
}

daemons_up() {
    local k
    munge_pid >/dev/null && ctld_pid >/dev/null || return 1
    if ! multi; then slurmd_pid >/dev/null; return; fi
    for k in $(seq "$nodes"); do
        holder_pid "$k" >/dev/null && slurmd_pid "$k" >/dev/null || return 1
    done
}

any_slurm_daemon() {
    local k
    ctld_pid >/dev/null && return 0
    if ! multi; then slurmd_pid >/dev/null; return; fi
    for k in $(seq "$nodes"); do slurmd_pid "$k" >/dev/null && return 0; done
    return 1
}

start() {
    install
    # Another shape than the running cluster's: stop it first.
    if [[ -f $layout && -n $want_nodes && $want_nodes != "$nodes" ]]; then
        if munge_pid >/dev/null || any_slurm_daemon; then
            die "$dir runs a cluster of $nodes node(s); \`$0 stop $dir\` first to start one of $want_nodes"
        fi
        rm -f "$layout"
    fi
    if [[ ! -f $layout ]]; then write_layout; fi
    if multi; then check_multi; fi
    if daemons_up && [[ -n $(node_states) ]]; then
        say "already running from $dir"
        wait_idle
    else
        # Start what is missing and leave what runs alone (a running job survives a slurmd
        # restart; a node stopped by kill-node boots again). Fresh ports only when no Slurm
        # daemon holds the old ones.
        if [[ ! -f $conf ]] || ! any_slurm_daemon; then write_conf; fi
        if multi; then net_up; fi
        start_munge
        start_slurm
        wait_idle
        say "up: $(node_states | tr '\n' ' ')conf $conf"
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
    local pid k
    # Cancel the jobs first: their slurmstepd ends them and their processes (TERM, then KILL after
    # KillWait), then exits itself.
    if [[ -f $conf ]] && ctld_pid >/dev/null && munge_pid >/dev/null; then
        scancel --full --quiet --partition=local 2>/dev/null || true
        for _ in $(seq 150); do
            [[ -z $(our_stepds) ]] && break
            sleep 0.1
        done
    fi
    if multi; then
        for k in $(seq "$nodes"); do
            if pid=$(slurmd_pid "$k"); then kill_wait "$pid" slurmd; fi
        done
        # Whatever still runs on a node (a step whose slurmd was gone, the node's holder) is ours:
        # it is in the node's network namespace, which this script made.
        for k in $(seq "$nodes"); do kill_node "$k"; done
    elif pid=$(slurmd_pid); then
        kill_wait "$pid" slurmd
    fi
    if pid=$(ctld_pid); then kill_wait "$pid" slurmctld; fi
    # A step whose slurmd or slurmctld was already gone: end its processes by hand.
    for pid in $(our_stepds); do
        # shellcheck disable=SC2046  # one pid per word
        kill -KILL $(descendants "$pid") 2>/dev/null || true
        kill_wait "$pid" slurmstepd
    done
    if pid=$(munge_pid); then kill_wait "$pid" munged; fi
    if multi; then
        net_down
        say "stopped the daemons, nodes, namespaces and links of $dir"
    else
        say "stopped the daemons of $dir"
    fi
}

status() {
    local ok=0 pid k states line
    if pid=$(munge_pid); then say "munged running (pid $pid)"; else say "munged not running"; ok=1; fi
    if pid=$(ctld_pid); then say "slurmctld running (pid $pid)"; else say "slurmctld not running"; ok=1; fi
    if multi; then
        for k in $(seq "$nodes"); do
            if ! holder_pid "$k" >/dev/null; then say "node$k: down (its namespaces hold no process)"; ok=1; continue; fi
            if pid=$(slurmd_pid "$k"); then say "node$k: slurmd running (pid $pid), address $(node_addr "$k")"
            else say "node$k: slurmd not running"; ok=1; fi
        done
    elif pid=$(slurmd_pid); then say "slurmd running (pid $pid)"
    else say "slurmd not running"; ok=1; fi
    if [[ $ok -eq 0 ]]; then
        states=$(node_states || true)
        if [[ -n $states ]]; then
            while read -r line; do say "node ${line/ /: }"; done <<<"$states"
        else
            say "no answer from slurmctld"
        fi
        all_up || ok=1
    fi
    if [[ $ok -eq 0 ]]; then echo "export SLURM_CONF=$conf"; fi
    return $ok
}

node_arg() {  # NODE -> K; refused on a one-node cluster or for a node it does not have
    multi || die "$dir runs a one-node cluster (localhost): there is no node to enter"
    node_number "$1" || die "$1: no such node (the nodes are $(node_names | tr '\n' ' '))"
}

case $action in
    start) start ;;
    stop) stop ;;
    status) status ;;
    exec)
        k=$(node_arg "$1")
        shift
        on_node "$k" "$@" ;;
    kill-node)
        k=$(node_arg "$1")
        kill_node "$k"
        say "node$k is down: every process on it was killed; \`$0 start $dir\` boots it again" ;;
    *) usage ;;
esac
