#!/usr/bin/env bash
# run_forever.sh - keep whisper_server.py running: restart it when it crashes or is killed.
#
# Usage: ./run_forever.sh [server flags...]        e.g. ./run_forever.sh --mode ws --ws-port 8000
#   Typically inside `screen -S whisper` so the server survives the SSH session.
#
# - Server exits with code 0 (a clean shutdown): the loop ends.
# - Any other exit (crash, kill -9, out of memory): one log line, then a restart after an exponential
#   back-off of 1, 2, 4, ... seconds, capped at RESTART_MAX_DELAY (60). The back-off starts again at 1 s
#   once the server has stayed up longer than RESTART_RESET_AFTER (60) seconds.
# - Exit codes listed in RESTART_STOP_CODES (default "2": bad command-line flags, missing file) are not
#   worth retrying: the loop ends with that code.
# - Ctrl-C / SIGTERM / SIGHUP to this script: SIGTERM goes to the server, the script waits for it
#   (SIGKILL after STOP_TIMEOUT, 30 s) and exits 0 without restarting.
#
# Environment:
#   SERVER_CMD           command to run instead of "<venv python> whisper_server.py"; a shell string, run
#                        with bash -c, the script's arguments appended (used by tests to run a fake server)
#   RESTART_MAX_DELAY    longest back-off in seconds (default 60)
#   RESTART_RESET_AFTER  uptime in seconds after which the back-off resets (default 60)
#   RESTART_STOP_CODES   space-separated exit codes that end the loop instead of restarting (default "2")
#   STOP_TIMEOUT         seconds to wait for the server after SIGTERM before SIGKILL (default 30)
set -uo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || exit 1

MAX_DELAY="${RESTART_MAX_DELAY:-60}"
RESET_AFTER="${RESTART_RESET_AFTER:-60}"
STOP_CODES="${RESTART_STOP_CODES:-2}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"

log() {
    printf '[%s] run_forever: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2
}

is_uint() {
    case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac
}

for setting in MAX_DELAY RESET_AFTER STOP_TIMEOUT; do
    if ! is_uint "${!setting}"; then
        log "invalid $setting '${!setting}': expected a whole number of seconds"
        exit 2
    fi
done
if [ "$MAX_DELAY" -lt 1 ]; then MAX_DELAY=1; fi

if [ -n "${SERVER_CMD:-}" ]; then
    # "$@" inside the bash -c string expands to this script's arguments (passed after "$0")
    cmd=(bash -c "$SERVER_CMD"' "$@"' whisper-server "$@")
else
    if [ -x .venv/bin/python ]; then
        python=.venv/bin/python
    else
        python=python3
    fi
    if [ ! -f whisper_server.py ]; then
        log "whisper_server.py not found in $(pwd)"
        exit 1
    fi
    cmd=("$python" whisper_server.py "$@")
fi

# Job control puts the server in a process group of its own: Ctrl-C in the terminal reaches only this
# script, which then stops the server (and anything it started) with exactly one SIGTERM.
set -m

stop_signal=""
child=""
child_signaled=0

signal_child() {
    # the whole process group first (SERVER_CMD may start several processes); the pid alone as fall-back
    kill "-$1" -- "-$child" 2>/dev/null || kill "-$1" "$child" 2>/dev/null || true
}

on_signal() {
    stop_signal="$1"
    # Forward at once, so the server starts shutting down even if we are not inside `wait` yet.
    # A second Ctrl-C is forwarded again (uvicorn then skips its graceful shutdown).
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        child_signaled=1
        signal_child TERM
    fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# Wait for the server; returns its exit status, or 255 when a stop was requested meanwhile.
wait_child() {
    local rc
    while :; do
        if [ -n "$stop_signal" ]; then
            return 255
        fi
        wait "$child" 2>/dev/null
        rc=$?
        if [ -n "$stop_signal" ]; then
            return 255
        fi
        # wait also returns early (> 128) for signals we do not stop on; the server may still be up
        if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then
            continue
        fi
        return "$rc"
    done
}

stop_child() {
    local waited=0 rc
    log "received SIG$stop_signal; stopping the server (pid $child)"
    if kill -0 "$child" 2>/dev/null; then
        if [ "$child_signaled" -eq 0 ]; then
            child_signaled=1
            signal_child TERM
        fi
        # poll in tenths of a second so that a quick shutdown is noticed quickly
        while kill -0 "$child" 2>/dev/null; do
            if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
                log "server did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
                signal_child KILL
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    wait "$child" 2>/dev/null
    rc=$?
    log "server stopped ($(describe_exit "$rc")); not restarting"
}

describe_exit() {
    local rc="$1"
    if [ "$rc" -gt 128 ] && [ "$rc" -lt 160 ]; then
        local name
        name="$(kill -l "$((rc - 128))" 2>/dev/null || echo "?")"
        printf 'exit code %s (killed by SIG%s)' "$rc" "$name"
    else
        printf 'exit code %s' "$rc"
    fi
}

delay=1
restarts=0
log "starting: ${cmd[*]}"
while :; do
    started=$SECONDS
    child_signaled=0
    "${cmd[@]}" &
    child=$!
    wait_child
    rc=$?
    if [ -n "$stop_signal" ]; then
        stop_child
        exit 0
    fi
    uptime=$((SECONDS - started))

    if [ "$rc" -eq 0 ]; then
        log "server exited normally (exit code 0) after ${uptime}s; not restarting"
        exit 0
    fi
    for code in $STOP_CODES; do
        if [ "$rc" = "$code" ]; then
            log "server exited with $(describe_exit "$rc") after ${uptime}s; this code is listed in RESTART_STOP_CODES, not restarting (check the flags and the log above)"
            exit "$rc"
        fi
    done

    if [ "$uptime" -gt "$RESET_AFTER" ]; then
        delay=1
    fi
    restarts=$((restarts + 1))
    log "server exited with $(describe_exit "$rc") after ${uptime}s; restart #$restarts in ${delay}s"

    # sleep in the background so a signal during the back-off is handled at once
    sleep "$delay" &
    sleeper=$!
    if [ -z "$stop_signal" ]; then
        wait "$sleeper" 2>/dev/null
    fi
    if [ -n "$stop_signal" ]; then
        kill "$sleeper" 2>/dev/null
        wait "$sleeper" 2>/dev/null
        log "received SIG$stop_signal during back-off; not restarting"
        exit 0
    fi

    delay=$((delay * 2))
    if [ "$delay" -gt "$MAX_DELAY" ]; then
        delay=$MAX_DELAY
    fi
done
