# shellcheck shell=bash disable=SC2034  # the names below are used by start.sh and stop.sh
# Shared by start.sh and stop.sh (sourced, not run): names, paths and process bookkeeping of the
# local two-node Slurm cluster. Every daemon is started by start.sh, which records its PID under
# $PID_DIR; stop.sh stops exactly those processes and nothing else.

SLURM_CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${MLBENCH_SLURM_STATE:-/tmp/mlbench-slurm}"
PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
BACKUP_DIR="$STATE_DIR/backup"

CLUSTER_NAME=mlbench
PARTITION=debug
ACCOUNT=mlbench
NODES=(node1 node2)
NODE_ADDRS=(127.0.0.2 127.0.0.3)
NODE_PORTS=17001-17002
# Each node has 2 sockets (= 2 NUMA nodes) and as many CPUs as the host (rounded down to an
# even count): Slurm binds tasks to real CPUs (task/affinity), so a node may not claim more.
HOST_CPUS=$(nproc)
CPUS_PER_NODE="${MLBENCH_SLURM_CPUS:-$(( HOST_CPUS >= 2 ? HOST_CPUS / 2 * 2 : 2 ))}"
SOCKETS_PER_NODE=2
MEMORY_MB_PER_NODE="${MLBENCH_SLURM_MEMORY_MB:-8192}"
CTLD_PORT=6817
DBD_PORT=6819
DB_PORT=17306
DB_SOCKET="$STATE_DIR/mariadb/mariadb.sock"

SLURM_ETC=/etc/slurm
# Files this cluster installs outside $STATE_DIR; stop.sh puts back what was there before.
INSTALLED_CONFIGS=(slurm.conf slurmdbd.conf)
HOSTS_FILE=/etc/hosts
HOSTS_MARKER="# mlbench-slurm"
CONFIG_MARKER="# mlbench-slurm:"

log() { echo "[slurm-ci] $*" >&2; }
die() { echo "[slurm-ci] ERROR: $*" >&2; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, edits /etc/hosts, starts daemons)"
}

# Seconds since the epoch with millisecond resolution, for the timings start.sh prints.
now() { date +%s.%N; }
elapsed_since() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'; }

# True when process PID has exited: gone, or a zombie that init has not reaped yet (the daemons
# are reparented to init once start.sh exits).
process_gone() {
    local stat
    stat=$(cat "/proc/$1/stat" 2> /dev/null) || return 0
    [[ "${stat##*) }" == Z* ]]
}

# The PID recorded for daemon NAME if that process still runs the recorded program, else nothing.
# The program name is recorded with the PID so a recycled PID is never mistaken for the daemon.
running_pid() {
    local name=$1 pid program
    [[ -f "$PID_DIR/$name.pid" ]] || return 1
    read -r pid program < "$PID_DIR/$name.pid" || return 1
    [[ -n "$pid" ]] || return 1
    process_gone "$pid" && return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${program:0:15}" ]] || return 1
    echo "$pid"
}

is_running() { running_pid "$1" > /dev/null; }

# Poll COMMAND every half second until it succeeds or TIMEOUT seconds pass.
wait_for() {
    local timeout=$1 deadline
    shift
    deadline=$(( $(date +%s) + timeout ))
    until "$@" > /dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.5
    done
}
