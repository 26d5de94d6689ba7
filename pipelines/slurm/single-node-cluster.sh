#!/usr/bin/env bash
# A single-node Slurm cluster (slurmctld + slurmd + munge) on this machine,
# for CI and for trying `curate run --executor slurm` locally.
#   sudo apt-get install slurm-wlm munge     # Debian's packages
#   eval "$(pipelines/slurm/single-node-cluster.sh /tmp/curate-slurm)"
# Prints `export SLURM_CONF=…` for the caller to evaluate.
set -euo pipefail
dir=${1:-/tmp/curate-slurm}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$dir"/{state,spool,log}
cat > "$dir/slurm.conf" <<CONF
ClusterName=curate
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force >&2
export SLURM_CONF="$dir/slurm.conf"
pgrep -x slurmctld >/dev/null || slurmctld -f "$SLURM_CONF" >&2
pgrep -x slurmd >/dev/null || slurmd -f "$SLURM_CONF" >&2
for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -q idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; see $dir/log" >&2
exit 1
