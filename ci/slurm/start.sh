#!/usr/bin/env bash
# Start a real two-node Slurm cluster (node1, node2, partition "debug") with job accounting on
# this host, for CI and for developers: munged, MariaDB, slurmdbd, slurmctld and one slurmd per
# emulated node, all without systemd. Installs the Debian packages when missing. Idempotent:
# daemons already running are left alone. Stop it with ci/slurm/stop.sh. See docs/slurm-ci.md.
set -euo pipefail
# shellcheck source=ci/slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
REQUIRED_PROGRAMS=(slurmctld slurmd slurmdbd sinfo sacctmgr munged munge mariadbd mariadb mariadb-install-db)
NODES_IDLE_TIMEOUT_S=90

install_packages() {
    local program missing=()
    for program in "${REQUIRED_PROGRAMS[@]}"; do
        command -v "$program" > /dev/null || missing+=("$program")
    done
    (( ${#missing[@]} == 0 )) && return 0
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    local started policy_created=0
    started=$(now)
    # Package scripts must not try to start the services: this script runs them itself.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local status=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${PACKAGES[@]}"
    } > "$STATE_DIR/apt.log" 2>&1 || status=$?
    (( policy_created )) && rm -f /usr/sbin/policy-rc.d
    (( status == 0 )) || { tail -n 20 "$STATE_DIR/apt.log" >&2; die "apt-get failed (log: $STATE_DIR/apt.log)"; }
    log "packages installed in $(elapsed_since "$started") s"
}

prepare_state_dirs() {
    mkdir -p "$PID_DIR" "$LOG_DIR" "$BACKUP_DIR" "$STATE_DIR/etc" "$STATE_DIR/run" \
        "$STATE_DIR/ctld" "$STATE_DIR/mariadb"
    chmod 700 "$STATE_DIR/etc" "$BACKUP_DIR"
    local node
    for node in "${NODES[@]}"; do mkdir -p "$STATE_DIR/spool/$node"; done
    chmod 755 "$STATE_DIR"
    # slurmctld and slurmdbd drop to SlurmUser and write their pid, log and state files here.
    chown slurm:slurm "$LOG_DIR" "$STATE_DIR/run" "$STATE_DIR/ctld"
}

render() {
    local template=$1
    sed -e "s|@CLUSTER@|$CLUSTER_NAME|g" \
        -e "s|@HOST@|$(hostname -s)|g" \
        -e "s|@STATE@|$STATE_DIR|g" \
        -e "s|@PARTITION@|$PARTITION|g" \
        -e "s|@CPUS@|$CPUS_PER_NODE|g" \
        -e "s|@SOCKETS@|$SOCKETS_PER_NODE|g" \
        -e "s|@CORES_PER_SOCKET@|$(( CPUS_PER_NODE / SOCKETS_PER_NODE ))|g" \
        -e "s|@MEMORY_MB@|$MEMORY_MB_PER_NODE|g" \
        -e "s|@NODE_PORTS@|$NODE_PORTS|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_PORT@|$DB_PORT|g" \
        -e "s|@DB_PASSWORD@|$(cat "$STATE_DIR/db.password")|g" \
        "$SLURM_CI_DIR/$template"
}

# Put the rendered configs in /etc/slurm, where every Slurm command looks by default. A config
# that this script did not write is backed up once and restored by stop.sh.
install_configs() {
    [[ -s "$STATE_DIR/db.password" ]] ||
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' > "$STATE_DIR/db.password")
    mkdir -p "$SLURM_ETC"
    local name target
    for name in "${INSTALLED_CONFIGS[@]}"; do
        render "$name.in" > "$STATE_DIR/etc/$name"
        target="$SLURM_ETC/$name"
        if [[ -e "$target" ]] && ! grep -q "^$CONFIG_MARKER" "$target"; then
            [[ -e "$BACKUP_DIR/$name" ]] || cp -p "$target" "$BACKUP_DIR/$name"
        fi
        if is_running slurmctld && ! cmp -s "$STATE_DIR/etc/$name" "$target"; then
            die "the running cluster uses another $target; run ci/slurm/stop.sh first"
        fi
        if [[ "$name" == slurmdbd.conf ]]; then
            # slurmdbd refuses a config others can read: it holds the database password.
            install -o slurm -g slurm -m 600 "$STATE_DIR/etc/$name" "$target"
        else
            install -m 644 "$STATE_DIR/etc/$name" "$target"
        fi
    done
}

# Map node1, node2 to their loopback addresses so that jobs (e.g. a torchrun rendezvous on the
# first node of the allocation) can resolve them. stop.sh removes exactly these lines.
map_node_hostnames() {
    grep -qF "$HOSTS_MARKER" "$HOSTS_FILE" || cp -p "$HOSTS_FILE" "$BACKUP_DIR/hosts"
    local i line
    for i in "${!NODES[@]}"; do
        line="${NODE_ADDRS[$i]} ${NODES[$i]} $HOSTS_MARKER"
        grep -qxF "$line" "$HOSTS_FILE" || echo "$line" >> "$HOSTS_FILE"
    done
}

# Run a foreground daemon in its own session, detached from this script's terminal and output,
# and record its PID together with the program name for running_pid().
launch() {
    local name=$1 program=$2
    shift 2
    setsid "$@" < /dev/null >> "$LOG_DIR/$name.out" 2>&1 &
    echo "$! $program" > "$PID_DIR/$name.pid"
    sleep 0.2
    is_running "$name" || die "$name exited at once; see $LOG_DIR/$name.out and $LOG_DIR/$name.log"
}

munge_works() { munge -n | unmunge > /dev/null; }

start_munge() {
    if is_running munged || munge_works 2> /dev/null; then return 0; fi
    install -d -o munge -g munge -m 755 /run/munge
    launch munged munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --log-file="$LOG_DIR/munged.log"
    wait_for 15 munge_works || die "munged does not answer; see $LOG_DIR/munged.log"
}

db_client() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
    local datadir="$STATE_DIR/mariadb/data"
    if ! is_running mariadbd; then
        if [[ ! -d "$datadir/mysql" ]]; then
            log "initialising the accounting database in $datadir"
            mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
                --auth-root-authentication-method=socket --skip-test-db \
                > "$LOG_DIR/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed; see $LOG_DIR/mariadb-install.log"
        fi
        chown -R mysql:mysql "$STATE_DIR/mariadb"
        launch mariadbd mariadbd mariadbd --no-defaults --user=mysql --datadir="$datadir" \
            --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --skip-name-resolve --pid-file="$STATE_DIR/mariadb/mariadbd.pid" \
            --log-error="$LOG_DIR/mariadbd.log" --innodb-lock-wait-timeout=900
    fi
    wait_for 60 db_client -e 'SELECT 1' || die "MariaDB does not answer; see $LOG_DIR/mariadbd.log"
    local password
    password=$(cat "$STATE_DIR/db.password")
    db_client --batch <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

slurmdbd_answers() { sacctmgr -n list cluster; }

start_slurmdbd() {
    is_running slurmdbd || launch slurmdbd slurmdbd slurmdbd -D
    wait_for 60 slurmdbd_answers || die "slurmdbd does not answer; see $LOG_DIR/slurmdbd.log"
}

# The cluster must be known to slurmdbd before slurmctld reports jobs to it.
register_accounting() {
    local user
    [[ -n "$(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=cluster)" ]] ||
        sacctmgr -i add cluster "$CLUSTER_NAME" > /dev/null
    [[ -n "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ]] ||
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER_NAME" \
            description="mlbench CI" organization=mlbench > /dev/null
    for user in root ${SUDO_USER:-}; do
        [[ -n "$(sacctmgr -n -P list user "$user" format=user)" ]] ||
            sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER_NAME" > /dev/null
    done
}

start_slurmctld() {
    is_running slurmctld || launch slurmctld slurmctld slurmctld -D
    wait_for 60 scontrol ping || die "slurmctld does not answer; see $LOG_DIR/slurmctld.log"
}

start_slurmds() {
    local node
    for node in "${NODES[@]}"; do
        is_running "slurmd-$node" || launch "slurmd-$node" slurmd slurmd -D -N "$node"
    done
}

nodes_idle() {
    local states
    states=$(sinfo -h -N -p "$PARTITION" -o '%N %T' | sort -u)
    [[ "$states" == "$(printf '%s idle\n' "${NODES[@]}")" ]]
}

# A node left down or drained by an earlier run (e.g. killed mid-job) is put back in service.
resume_unavailable_nodes() {
    local node state
    while read -r node state; do
        case "$state" in
            down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME 2> /dev/null || true ;;
        esac
    done < <(sinfo -h -N -p "$PARTITION" -o '%N %T')
}

wait_nodes_idle() {
    wait_for 20 nodes_idle && return 0
    resume_unavailable_nodes
    wait_for "$NODES_IDLE_TIMEOUT_S" nodes_idle && return 0
    sinfo -N -p "$PARTITION" -o '%N %T %E' >&2 || true
    die "nodes not idle after ${NODES_IDLE_TIMEOUT_S} s; see $LOG_DIR/slurmd-node*.log and slurmctld.log"
}

print_usage() {
    cat <<EOF
[slurm-ci] cluster "$CLUSTER_NAME" is up: partition $PARTITION, nodes ${NODES[*]}
           ($CPUS_PER_NODE CPUs and $MEMORY_MB_PER_NODE MB each, emulated on $(hostname -s)).
  sinfo -N
  srun -N2 --ntasks-per-node=1 bash -c 'echo \$SLURMD_NODENAME'
  sbatch --wrap 'echo hello'; sacct
  reframe -C site_config/settings.py --system slurm-ci -c reframe_tests -r
  pytest -m slurm tests/test_slurm_cluster.py
Jobs must use \$SLURMD_NODENAME to tell the nodes apart: \`hostname\` is the same on both.
Logs: $LOG_DIR   Stop: bash ci/slurm/stop.sh
EOF
}

main() {
    require_root
    (( CPUS_PER_NODE % SOCKETS_PER_NODE == 0 && CPUS_PER_NODE <= HOST_CPUS )) ||
        die "MLBENCH_SLURM_CPUS=$CPUS_PER_NODE: use an even count up to the host's $HOST_CPUS CPUs"
    local started
    started=$(now)
    mkdir -p "$STATE_DIR"
    install_packages
    prepare_state_dirs
    install_configs
    map_node_hostnames
    start_munge
    start_mariadb
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmds
    wait_nodes_idle
    log "cluster ready in $(elapsed_since "$started") s"
    print_usage
}

main "$@"
