#!/usr/bin/env bash
# Start a single-node SLURM on this machine for tests/test_slurm.py (as root; Debian's slurm-wlm and munge).
# Idempotent: returns at once when sinfo already answers. Writes /etc/slurm/slurm.conf for this host (its
# name, cores and memory from `slurmd -C`), starts munged, slurmctld and slurmd, and waits (at most 90 s)
# until sinfo shows the node idle. Settings the tests need: requeue allowed (JobRequeue=1), finished jobs
# forgotten quickly (MinJobAge), jobs sharing the node by cores. Exit status 0 when the node is up.
# NC_SLURM_INSTALL=1 installs the packages first with apt-get (CI).
set -euo pipefail

node_up() { timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }

if [ "${NC_SLURM_INSTALL:-0}" = 1 ] && ! command -v slurmctld >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if command -v sinfo >/dev/null && node_up; then
    echo "start_slurm: SLURM already up: $(sinfo -h -o '%N %T %c')"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm: needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)" >&2
    exit 1
fi

host=$(hostname -s)
node=$(slurmd -C | head -1)  # NodeName=<host> CPUs=... RealMemory=...
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<EOF
# written by tests/slurm/start_slurm.sh: a single-node SLURM for the tests
ClusterName=nc-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MinJobAge=30
KillWait=10
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

chown munge:munge /run/munge
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 90); do
    if node_up; then
        echo "start_slurm: SLURM up: $(sinfo -h -o '%N %T %c')"
        exit 0
    fi
    sleep 1
done
echo "start_slurm: the node did not come up in 90 s; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
