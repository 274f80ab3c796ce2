#!/usr/bin/env bash
# A real one-node Slurm on this machine, for tests of `astro ablate --slurm` (run as root):
#
#   scripts/slurm/one-node.sh start   # installs Debian's slurm-wlm and munge if missing, starts munged,
#                                     # slurmctld and slurmd, waits for the node to be idle
#   scripts/slurm/one-node.sh stop    # stops the three daemons
#
# Debian's Slurm 22.05, without systemd: root runs the controller and the node daemon, one partition
# `debug` with every CPU of this machine. Accounting is off, so wait on jobs with squeue, not sacct.
# Requeued jobs wait two minutes before they may start again (Slurm's own delay); a test can start
# one at once with `scontrol update JobId=… StartTime=now`.
set -euo pipefail

start() {
  if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
  fi
  local host
  host=$(hostname)
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  [ -f /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2> /dev/null
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  pgrep -x munged > /dev/null || runuser -u munge -- /usr/sbin/munged
  cat > /etc/slurm/slurm.conf << EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$(($(free -m | awk '/^Mem:/ {print $2}') * 8 / 10)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  pgrep -x slurmctld > /dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd > /dev/null || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if sinfo -h -o '%t' 2> /dev/null | grep -qE '^(idle|mix|alloc)'; then
      sinfo
      return 0
    fi
    sleep 1
  done
  echo "slurm did not come up; see /var/log/slurm/" >&2
  return 1
}

stop() {
  scontrol shutdown > /dev/null 2>&1 || true
  for daemon in slurmd slurmctld; do
    pkill -x "$daemon" 2> /dev/null || true
  done
  for _ in $(seq 20); do
    pgrep -x slurmctld > /dev/null || pgrep -x slurmd > /dev/null || break
    sleep 0.5
  done
  pkill -x munged 2> /dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
