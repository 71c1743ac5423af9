#!/usr/bin/env bash
# Run a command (the test suite: `make test`) with what its compose tests need, then clean up.
#
#   scripts/test_env.sh COMMAND [ARG...]
#
# A Docker engine, docker-compose and busybox (the compose tests' minimal image): missing tools
# are installed from Debian's packages (docker.io, docker-compose, busybox-static) when running
# as root with apt-get; a dockerd is started when none answers and stopped by its PID when the
# command ends. Where Docker cannot be had, FEDATTR_DOCKER_UNAVAILABLE carries the reason to the
# tests, which skip the compose tests with it (pytest -rs prints it); under CI=true they fail
# instead. FEDATTR_SKIP_DOCKER=1 skips the set-up and the compose tests on purpose.
# FEDATTR_TEST_UID stands in for `id -u` (the tests of this script use it).
set -uo pipefail

uid="${FEDATTR_TEST_UID:-$(id -u)}"
dockerd_pid=""
reason=""

say() { echo "test-env: $*" >&2; }

stop_docker() {
    # Only an engine started here is stopped here, by its PID.
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        kill "$dockerd_pid"
        for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid"
        say "dockerd (PID $dockerd_pid) stopped"
    fi
}
trap stop_docker EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

engine_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

setup_docker() {
    local missing=() tool
    for tool in docker dockerd docker-compose busybox; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    # A running engine with compose v2 needs nothing else.
    if engine_up && { command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1; } \
            && command -v busybox >/dev/null; then
        return 0
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$uid" -ne 0 ]; then
            reason="not root, so ${missing[*]} cannot be installed here (as root: apt-get install docker.io docker-compose busybox-static)"
            return 1
        fi
        if ! command -v apt-get >/dev/null; then
            reason="${missing[*]} missing and no apt-get to install them (Debian's docker.io, docker-compose, busybox-static)"
            return 1
        fi
        say "installing docker.io, docker-compose and busybox-static (Debian packages, about a minute)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                docker.io docker-compose busybox-static >/dev/null; }; then
            reason="apt-get install docker.io docker-compose busybox-static failed"
            return 1
        fi
    fi
    engine_up && return 0
    if [ "$uid" -ne 0 ]; then
        reason="no Docker engine answers and only root can start dockerd here"
        return 1
    fi
    local log="${TMPDIR:-/tmp}/fedattr-dockerd.$$.log"
    setsid dockerd >"$log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        if engine_up; then say "dockerd up (PID $dockerd_pid, log $log)"; return 0; fi
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 1
    done
    reason="dockerd did not come up within 60 s: $(tail -3 "$log" 2>/dev/null | tr '\n' ' ')"
    return 1
}

if [ $# -eq 0 ]; then
    echo "usage: scripts/test_env.sh COMMAND [ARG...]" >&2
    exit 2
fi

if [ "${FEDATTR_SKIP_DOCKER:-0}" = "1" ]; then
    say "FEDATTR_SKIP_DOCKER=1: no Docker set-up; the compose tests skip"
elif ! setup_docker; then
    export FEDATTR_DOCKER_UNAVAILABLE="$reason"
    if [ "${CI:-}" = "true" ]; then
        say "CI=true and Docker is unusable: $reason; the compose tests will fail"
    else
        say "Docker is unusable: $reason; the compose tests will be skipped (see the skip reasons)"
    fi
fi

"$@"
