#!/usr/bin/env bash
# Entry point of the Docker image (the Dockerfile's ENTRYPOINT; its CMD is `artifacts`). It runs the
# same outside Docker, which is how it is tested (tests/test_torch25_stack.py):
#   docker/entrypoint.sh artifacts [SCALE] [ARGS...]  every artifact (python -m paso_core.reproduce,
#                                                     SCALE smoke|default|paper, default: default)
#   docker/entrypoint.sh test [PYTEST ARGS...]        the unit tests that hold on the image's torch 2.5.1
#                                                     (the suite less what constraints/torch25_tests.txt leaves out)
#   docker/entrypoint.sh stack-check [ARGS...]        every engine's canary, known-broken ones named
#                                                     (benchmarks/torch25_check.py)
#   docker/entrypoint.sh gpu-check [ARGS...]          every method on the visible GPUs vs serial
#                                                     (benchmarks/gpu_check.py)
#   docker/entrypoint.sh help
#   docker/entrypoint.sh COMMAND [ARGS...]            any other program, run as given (jupyter, bash, python)
# Results go to $PASO_ARTIFACTS (default: artifacts/ in the checkout). PASO_ENTRYPOINT_DRY_RUN=1
# prints the command instead of running it; PYTHON picks the interpreter (default: python).
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
PY=${PYTHON:-python}
COMMANDS="artifacts test stack-check gpu-check help"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# run [--in-repo] CMD ARGS...: exec it (from the checkout with --in-repo), or print it on a dry run
run() {
    local dir=
    if [ "$1" = --in-repo ]; then dir=$REPO; shift; fi
    if [ -n "${PASO_ENTRYPOINT_DRY_RUN:-}" ]; then
        printf '%s' "${dir:+cd $dir && }"; printf '%q ' "$@"; echo
        exit 0
    fi
    if [ -n "$dir" ]; then cd "$dir"; fi
    exec "$@"
}

command=${1:-artifacts}
if [ $# -gt 0 ]; then shift; fi
artifacts_dir=${PASO_ARTIFACTS:-$REPO/artifacts}
case "$command" in
    artifacts)
        scale=default
        if [ $# -gt 0 ] && [[ $1 != -* ]]; then scale=$1; shift; fi
        case "$scale" in
            smoke|default|paper) ;;
            *) echo "entrypoint: unknown scale '$scale' for artifacts; use smoke, default or paper" >&2; exit 2 ;;
        esac
        run --in-repo "$PY" -m paso_core.reproduce --scale "$scale" "$@" ;;
    test)
        mapfile -t selected < <(grep -v -e '^#' -e '^[[:space:]]*$' "$REPO/constraints/torch25_tests.txt")
        run --in-repo "$PY" -m pytest -q "${selected[@]}" "$@" ;;
    stack-check)
        run --in-repo "$PY" benchmarks/torch25_check.py --out "$artifacts_dir" "$@" ;;
    gpu-check)
        run --in-repo "$PY" benchmarks/gpu_check.py --out "$artifacts_dir" "$@" ;;
    help|-h|--help)
        usage ;;
    *)
        if command -v "$command" >/dev/null 2>&1; then
            run "$command" "$@"
        fi
        echo "entrypoint: unknown command '$command' (neither one of: $COMMANDS, nor a program on PATH)" >&2
        echo "run 'help' for the list" >&2
        exit 2 ;;
esac
