#!/usr/bin/env bash
# Stop the local Slurm cluster started by ci/slurm/start.sh: cancel every job first (running jobs
# outlive slurmd), stop the daemons by their recorded PIDs only, then remove the node names from
# /etc/hosts and the configs from /etc/slurm, putting back what was there before.
# The accounting database and logs stay in the state folder for the next start; --purge removes
# that folder too.
set -euo pipefail
# shellcheck source=ci/slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JOBS_GONE_TIMEOUT_S=60
DAEMON_STOP_TIMEOUT_S=30
# Stop order: slurmctld stops scheduling, then the nodes; slurmdbd outlives slurmctld so that
# the last job records reach the database; munged goes last because every Slurm daemon uses it.
DAEMONS=(slurmctld slurmd-node1 slurmd-node2 slurmdbd mariadbd munged)

no_jobs_left() { [[ -z "$(squeue -h -o %A)" ]]; }

cancel_all_jobs() {
    is_running slurmctld || return 0
    local jobs
    jobs=$(squeue -h -o %A) || return 0
    [[ -n "$jobs" ]] || return 0
    log "cancelling jobs: ${jobs//$'\n'/ }"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs || true
    wait_for "$JOBS_GONE_TIMEOUT_S" no_jobs_left ||
        log "WARNING: jobs still listed after ${JOBS_GONE_TIMEOUT_S} s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}

stop_daemon() {
    local name=$1 pid started
    if pid=$(running_pid "$name"); then
        started=$(now)
        kill -TERM "$pid"
        if ! wait_for "$DAEMON_STOP_TIMEOUT_S" process_gone "$pid"; then
            log "WARNING: $name (pid $pid) ignored SIGTERM for ${DAEMON_STOP_TIMEOUT_S} s; killing it"
            kill -KILL "$pid" 2> /dev/null || true
        fi
        log "stopped $name (pid $pid) in $(elapsed_since "$started") s"
    fi
    rm -f "$PID_DIR/$name.pid"
}

restore_hosts_file() {
    grep -qF "$HOSTS_MARKER" "$HOSTS_FILE" || return 0
    # Written in place: /etc/hosts is often a bind mount that cannot be replaced by a rename.
    local kept
    kept=$(grep -vF "$HOSTS_MARKER" "$HOSTS_FILE")
    printf '%s\n' "$kept" > "$HOSTS_FILE"
    if cmp -s "$HOSTS_FILE" "$BACKUP_DIR/hosts"; then
        rm -f "$BACKUP_DIR/hosts"
    elif [[ -e "$BACKUP_DIR/hosts" ]]; then
        log "NOTE: $HOSTS_FILE changed since start.sh; its earlier copy is $BACKUP_DIR/hosts"
    fi
}

restore_configs() {
    local name target
    for name in "${INSTALLED_CONFIGS[@]}"; do
        target="$SLURM_ETC/$name"
        if [[ -e "$BACKUP_DIR/$name" ]]; then
            mv "$BACKUP_DIR/$name" "$target"
        elif [[ -e "$target" ]] && grep -q "^$CONFIG_MARKER" "$target"; then
            rm -f "$target"
        fi
    done
}

main() {
    require_root
    local purge=0
    case "${1:-}" in
        "") ;;
        --purge) purge=1 ;;
        *) die "usage: $0 [--purge]" ;;
    esac
    if [[ -d "$STATE_DIR" ]]; then
        cancel_all_jobs
        local daemon
        for daemon in "${DAEMONS[@]}"; do stop_daemon "$daemon"; done
    fi
    restore_hosts_file
    restore_configs
    if (( purge )); then
        rm -rf "$STATE_DIR"
        log "removed $STATE_DIR"
    fi
    log "cluster stopped"
}

main "$@"
