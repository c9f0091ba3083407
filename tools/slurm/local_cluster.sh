#!/usr/bin/env bash
# A private single-node Slurm on this machine (for tests and trying tools/slurm/ without a cluster).
#
#   tools/slurm/local_cluster.sh install              apt-get install slurm-wlm munge when missing (root)
#   tools/slurm/local_cluster.sh start DIR [--cpus N]  munged + slurmctld + slurmd, everything under DIR
#   tools/slurm/local_cluster.sh stop DIR              cancel its jobs, stop its daemons (by their PIDs)
#
# `start` writes DIR/slurm.conf (one node `gcnet-local` with N CPUs, default 2, and this machine's memory;
# one default partition `local`; free ports; its own munge key and socket, state, spool, logs and PID files
# under DIR), waits until the node is idle and prints `export SLURM_CONF=DIR/slurm.conf`: sbatch, squeue,
# scontrol and the jobs then talk to this cluster only.  No system Slurm or munge is read or touched.
# Needs root (the daemons run as root).  Exit status: 0 ok, 1 a daemon did not come up (its log is named),
# 2 bad usage or missing programs.
set -euo pipefail
PROG="local_cluster.sh"
die() { echo "$PROG: $1" >&2; exit "${2:-1}"; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }

need_bins() {
  local b missing=()
  for b in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || missing+=("$b")
  done
  [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]} (install slurm-wlm and munge: $0 install)" 2
}

sbin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_install() {
  if command -v slurmctld >/dev/null 2>&1 || [[ -x /usr/sbin/slurmctld ]]; then
    if command -v munged >/dev/null 2>&1 || [[ -x /usr/sbin/munged ]]; then
      echo "$PROG: slurm-wlm and munge are installed"; return 0
    fi
  fi
  [[ $(id -u) -eq 0 ]] || die "installing slurm-wlm and munge needs root" 2
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install slurm-wlm and munge by hand" 2
  echo "$PROG: apt-get install slurm-wlm munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || die "apt-get install failed"
  }
}

wait_for() {  # wait_for SECONDS DESCRIPTION LOG COMMAND...
  local t=$1 what=$2 log=$3; shift 3
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < end )) || die "$what did not come up within ${t}s (see $log)"
    sleep 0.5
  done
}

cmd_start() {
  local dir="" cpus=2
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --cpus) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--cpus needs a positive number" 2; cpus=$2; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      -*) die "unknown option $1" 2 ;;
      *) [[ -z "$dir" ]] || die "one DIR only" 2; dir=$1; shift ;;
    esac
  done
  [[ -n "$dir" ]] || die "start needs a DIR" 2
  [[ $(id -u) -eq 0 ]] || die "the local cluster needs root (its daemons run as root)" 2
  need_bins
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [[ ! -f "$dir/pids" ]] || die "$dir already has a running cluster (stop it first: $0 stop $dir)" 2
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  chmod 700 "$dir/munge"
  head -c 1024 /dev/urandom > "$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  local mem host port_ctld port_d
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  host=$(hostname -s)
  port_ctld=$(free_port); port_d=$(free_port)
  while [[ "$port_d" == "$port_ctld" ]]; do port_d=$(free_port); done
  cat > "$dir/slurm.conf" <<EOF
# written by tools/slurm/local_cluster.sh: a private single-node cluster
ClusterName=gcnetlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may start again cred_expire + 1 s later (default 120 s)
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2   # look at the queue every 2 s (default 60 s)
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
InactiveLimit=0
KillWait=10
MinJobAge=3600
NodeName=gcnet-local NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=gcnet-local Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  : > "$dir/pids"
  UP=0 CLUSTER_DIR=$dir
  trap '[[ $UP == 1 ]] || cmd_stop "$CLUSTER_DIR" 2>/dev/null' EXIT     # a daemon that did not come up: stop the others
  setsid "$(sbin munged)" --foreground --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" \
    </dev/null >>"$dir/log/munged.out" 2>&1 &
  echo "munged $!" >> "$dir/pids"
  wait_for 20 munged "$dir/log/munged.log" test -S "$dir/munge/munge.socket"
  setsid "$(sbin slurmctld)" -D -c -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >> "$dir/pids"
  wait_for 30 slurmctld "$dir/log/slurmctld.log" scontrol ping
  setsid "$(sbin slurmd)" -D -f "$SLURM_CONF" -N gcnet-local </dev/null >>"$dir/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >> "$dir/pids"
  node_idle() { [[ "$(sinfo -h -n gcnet-local -o %T 2>/dev/null)" == idle* ]]; }
  wait_for 60 "slurmd (node gcnet-local idle)" "$dir/log/slurmd.log" node_idle
  UP=1
  echo "$PROG: cluster up in $dir (node gcnet-local: $cpus CPUs, ${mem} MB; partition local)" >&2
  echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
  local dir=${1:-}
  [[ -n "$dir" ]] || die "stop needs the DIR given to start" 2
  [[ -f "$dir/pids" ]] || { echo "$PROG: no cluster running in $dir" >&2; return 0; }
  export SLURM_CONF="$dir/slurm.conf"
  timeout 20 scancel --user="$(id -un)" >/dev/null 2>&1 || true   # this cluster's jobs only
  sleep 1
  local name pid order=(slurmd slurmctld munged)
  for name in "${order[@]}"; do
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids")
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
  echo "$PROG: cluster in $dir stopped" >&2
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  -h|--help) usage ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command '$1' (install, start or stop)" 2 ;;
esac
