#!/usr/bin/env bash
# The three jobs of ci/gitlab/mlbench.gitlab-ci.yml: install, run, analyse.
#
#   bash ci/gitlab/mlbench-ci.sh install|run|analyse
#   bash ci/gitlab/mlbench-ci.sh venv      # prints the environment's folder
#
# Configured by the MLBENCH_* variables of the template (docs/ci.md). Runs on the login node
# that hosts the shell runner; `run` submits the tests to Slurm through ReFrame.
set -euo pipefail

: "${MLBENCH_SOURCE:?set MLBENCH_SOURCE to the mlbench-reframe checkout}"
: "${CI_PROJECT_DIR:=$PWD}"
: "${MLBENCH_HISTORY_DIR:=$CI_PROJECT_DIR/mlbench-history}"
: "${MLBENCH_WORK_DIR:=$CI_PROJECT_DIR/mlbench-work}"
: "${MLBENCH_VENV_ROOT:=$CI_PROJECT_DIR/.mlbench-venvs}"
: "${MLBENCH_PYTHON:=python3}"

MLBENCH_SOURCE=$(cd "$MLBENCH_SOURCE" && pwd)
NEW_PERFLOGS=$CI_PROJECT_DIR/mlbench-perflogs
HISTORY_PERFLOGS=$MLBENCH_HISTORY_DIR/perflogs

log() { printf '[mlbench-ci] %s\n' "$*" >&2; }
die() { printf '[mlbench-ci] error: %s\n' "$*" >&2; exit 2; }

# One environment per dependency set: the same pyproject.toml, Python and options reuse it.
venv_dir() {
    local key
    key=$({ cat "$MLBENCH_SOURCE/pyproject.toml"; "$MLBENCH_PYTHON" --version;
            echo "${MLBENCH_VENV_OPTIONS:-}" "${MLBENCH_PIP_OPTIONS:-}"; } |
          sha256sum | cut -c1-12)
    echo "$MLBENCH_VENV_ROOT/venv-$key"
}

# The environment holds the dependencies; the code always comes from this pipeline's
# checkout (PYTHONPATH), so pipelines of different commits can share one environment.
activate() {
    local venv
    venv=$(venv_dir)
    [[ -f $venv/.complete ]] || die "no environment at $venv: run the install job first"
    # shellcheck source=/dev/null
    source "$venv/bin/activate"
    export PYTHONPATH=$MLBENCH_SOURCE${PYTHONPATH:+:$PYTHONPATH}
}

install() {
    local venv
    venv=$(venv_dir)
    mkdir -p "$MLBENCH_VENV_ROOT"
    # Two pipelines starting together build the environment once.
    exec 9> "$MLBENCH_VENV_ROOT/.lock"
    flock 9
    if [[ -f $venv/.complete ]]; then
        log "reusing $venv"
        return
    fi
    log "creating $venv"
    rm -rf "$venv"
    # shellcheck disable=SC2086 # options are word lists on purpose
    "$MLBENCH_PYTHON" -m venv ${MLBENCH_VENV_OPTIONS:-} "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet ${MLBENCH_PIP_OPTIONS:-} "$MLBENCH_SOURCE"
    touch "$venv/.complete"
    log "environment ready"
}

reframe_command() {
    local -n into=$1
    into=(reframe -C "$MLBENCH_SOURCE/site_config/settings.py")
    [[ -n ${MLBENCH_SITE_CONFIG:-} ]] && into+=(-C "$MLBENCH_SITE_CONFIG")
    into+=(-c "$MLBENCH_SOURCE/reframe_tests")
    [[ -n ${MLBENCH_SYSTEM:-} ]] && into+=(--system "$MLBENCH_SYSTEM")
    [[ -n ${MLBENCH_MODE:-} ]] && into+=(--mode "$MLBENCH_MODE")
    into+=(--prefix "$MLBENCH_WORK_DIR/${CI_PIPELINE_ID:-manual}"
              --perflogdir "$NEW_PERFLOGS"
              --report-file "$CI_PROJECT_DIR/mlbench-report.json"
              --report-junit "$CI_PROJECT_DIR/mlbench-junit.xml")
    [[ -n ${MLBENCH_ACCOUNT:-} ]] && into+=(-J "account=$MLBENCH_ACCOUNT")
    # shellcheck disable=SC2206 # a word list on purpose
    into+=(${MLBENCH_REFRAME_OPTIONS:-} -r)
}

run() {
    activate
    rm -rf "$NEW_PERFLOGS"
    local reframe_args status=0
    reframe_command reframe_args
    log "${reframe_args[*]}"
    "${reframe_args[@]}" || status=$?
    # The rows of failed tests are history too: append whatever the run wrote.
    if [[ -d $NEW_PERFLOGS ]]; then
        python3 "$MLBENCH_SOURCE/ci/gitlab/append_history.py" "$NEW_PERFLOGS" "$HISTORY_PERFLOGS"
    else
        log "the run wrote no perflog"
    fi
    (( status == 0 )) || log "reframe exited with $status: some tests failed (see the JUnit report)"
    return "$status"
}

analyse() {
    activate
    [[ -d $HISTORY_PERFLOGS ]] || die "no perflog history at $HISTORY_PERFLOGS"
    local options=() status=0
    # shellcheck disable=SC2206 # a word list on purpose
    options=(${MLBENCH_REGRESSION_OPTIONS:-})
    [[ -n ${MLBENCH_BASELINE_SINCE:-} ]] && options+=(--since "$MLBENCH_BASELINE_SINCE")
    mlbench perflogs regressions "${options[@]}" "$HISTORY_PERFLOGS" \
        > "$CI_PROJECT_DIR/mlbench-regressions.txt" || status=$?
    cat "$CI_PROJECT_DIR/mlbench-regressions.txt"
    mlbench perflogs dashboard "${options[@]}" "$HISTORY_PERFLOGS" \
        -o "$CI_PROJECT_DIR/mlbench-dashboard.html"
    case $status in
        0) log "no regression, no failed run" ;;
        1) log "regression or failed run: see the rows marked above" ;;
        *) log "mlbench perflogs regressions exited with $status" ;;
    esac
    return "$status"
}

case ${1:-} in
    install|run|analyse) "$1" ;;
    venv) venv_dir ;;
    *) die "usage: mlbench-ci.sh install|run|analyse|venv" ;;
esac
