#!/usr/bin/env bash
# `make dev`'s Dagster (its arguments: the command to run), stopped at the first Ctrl-C.
# `dagster dev` alone waits for its code servers, which let go of a Ctrl-C only after a
# minute or more: here the command runs in a process group of its own, and Ctrl-C (or
# SIGTERM) sends that group SIGTERM, then SIGKILL what is left after 5 s.
set -u
setsid "$@" &
group=$!

stop() {
    trap - INT TERM
    echo "make dev: stopping Dagster" >&2
    kill -TERM -- "-$group" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 -- "-$group" 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -KILL -- "-$group" 2>/dev/null
    exit 0
}
trap stop INT TERM
wait "$group"
