#!/usr/bin/env bash
# start_server.sh - start menu for whisper_server.py.
#
# Usage:
#   ./start_server.sh                          on a terminal: shows the menu below
#   ./start_server.sh MODE [server flags...]   no menu; MODE is one of
#       ws      plain HTTP/WS on $WS_PORT (8765)                       (menu 1)
#       wss     HTTPS/WSS on $WSS_PORT (8766)                          (menu 2)
#       both    WS and WSS in one process                              (menu 3)
#       debug   both + --debug: save received audio to ./debug_audio   (menu 4)
#       noauth  ws + --no-auth: no API keys (testing only)             (menu 5)
#   e.g. ./start_server.sh ws --model small --log-level debug
#   With no arguments and no terminal (cron, CI, pipes) it starts "ws".
#
# Environment: WS_PORT (8765), WSS_PORT (8766), SSL_KEY (./key.pem), SSL_CERT (./cert.pem),
#   CERT_NAMES (extra host names / IPs for a generated certificate), SERVER_PYTHON (interpreter;
#   default .venv/bin/python, created by ./install.sh when missing, else python3).
# For wss/both/debug a self-signed certificate is generated when key/cert are missing.
# The server replaces this script (exec), so Ctrl-C and SIGTERM reach it directly.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

WS_PORT="${WS_PORT:-8765}"
WSS_PORT="${WSS_PORT:-8766}"
SSL_KEY="${SSL_KEY:-./key.pem}"
SSL_CERT="${SSL_CERT:-./cert.pem}"
CERT_NAMES="${CERT_NAMES:-}"

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

show_menu() {
    cat <<EOF

  Whisper STT server
  ==================
  1) WS       plain HTTP / WebSocket on port ${WS_PORT}
  2) WSS      HTTPS / secure WebSocket on port ${WSS_PORT}
  3) Both     WS on ${WS_PORT} and WSS on ${WSS_PORT}
  4) Debug    both, and save received audio to ./debug_audio
  5) No-auth  WS on ${WS_PORT} without API keys (testing only)
  q) Quit

EOF
}

# prints the mode name for a menu number or mode name; fails for anything else
normalize_mode() {
    case "$1" in
        1 | ws) echo ws ;;
        2 | wss) echo wss ;;
        3 | both) echo both ;;
        4 | debug) echo debug ;;
        5 | noauth | no-auth) echo noauth ;;
        *) return 1 ;;
    esac
}

mode=""
if [ "$#" -gt 0 ]; then
    case "$1" in
        -h | --help) usage; exit 0 ;;
    esac
    if ! mode="$(normalize_mode "$1")"; then
        usage >&2
        die "unknown mode '$1' (expected ws, wss, both, debug or noauth)"
    fi
    shift
elif [ -t 0 ]; then
    show_menu
    while :; do
        if ! read -r -p "  Choose [1-5, q]: " choice; then
            echo
            exit 1
        fi
        case "$choice" in
            q | Q | quit | exit) exit 0 ;;
        esac
        if mode="$(normalize_mode "$choice")"; then
            break
        fi
        echo "  Please type a number from 1 to 5 (or q)."
    done
else
    mode=ws
    echo "start_server.sh: no terminal and no mode given; starting in 'ws' mode" >&2
fi

case "$WS_PORT" in '' | *[!0-9]*) die "WS_PORT must be a port number, got '$WS_PORT'" ;; esac
case "$WSS_PORT" in '' | *[!0-9]*) die "WSS_PORT must be a port number, got '$WSS_PORT'" ;; esac

# Flags given after the mode win over the ones built here (argparse keeps the last value), and an
# --ssl-key/--ssl-cert given there is the pair to check or create.
prev=""
for arg in "$@"; do
    case "$prev" in
        --ssl-key) SSL_KEY="$arg" ;;
        --ssl-cert) SSL_CERT="$arg" ;;
    esac
    case "$arg" in
        --ssl-key=*) SSL_KEY="${arg#*=}" ;;
        --ssl-cert=*) SSL_CERT="${arg#*=}" ;;
    esac
    prev="$arg"
done

# --- interpreter -----------------------------------------------------------------------------------
if [ -n "${SERVER_PYTHON:-}" ]; then
    python="$SERVER_PYTHON"
elif [ -x .venv/bin/python ]; then
    python=.venv/bin/python
elif [ ! -e .venv ] && [ -x ./install.sh ]; then
    echo "start_server.sh: no .venv yet; running ./install.sh first" >&2
    if ./install.sh && [ -x .venv/bin/python ]; then
        python=.venv/bin/python
    else
        echo "start_server.sh: install.sh failed; trying the system python3" >&2
        python=python3
    fi
else
    python=python3
fi
command -v "$python" >/dev/null 2>&1 || die "python interpreter '$python' not found; run ./install.sh"
[ -f whisper_server.py ] || die "whisper_server.py not found in $(pwd)"

# --- flags for the chosen mode ---------------------------------------------------------------------
tls_flags=(--wss-port "$WSS_PORT" --ssl-key "$SSL_KEY" --ssl-cert "$SSL_CERT")
case "$mode" in
    ws) flags=(--mode ws --ws-port "$WS_PORT") ;;
    wss) flags=(--mode wss "${tls_flags[@]}") ;;
    both) flags=(--mode both --ws-port "$WS_PORT" "${tls_flags[@]}") ;;
    debug) flags=(--mode both --ws-port "$WS_PORT" "${tls_flags[@]}" --debug) ;;
    noauth) flags=(--mode ws --ws-port "$WS_PORT" --no-auth) ;;
esac

# --- certificate for the TLS modes -----------------------------------------------------------------
case "$mode" in
    wss | both | debug)
        if [ ! -e "$SSL_KEY" ] && [ ! -e "$SSL_CERT" ]; then
            echo "start_server.sh: $SSL_KEY / $SSL_CERT not found; creating a self-signed certificate" >&2
            read -r -a cert_names <<<"$CERT_NAMES"
            "$python" generate_ssl_cert.py --key "$SSL_KEY" --cert "$SSL_CERT" "${cert_names[@]}" \
                || die "could not create the certificate (see above)"
        elif [ ! -e "$SSL_KEY" ] || [ ! -e "$SSL_CERT" ]; then
            die "only one of $SSL_KEY and $SSL_CERT exists; restore the other, or make a new pair with: $python generate_ssl_cert.py --force --key $SSL_KEY --cert $SSL_CERT"
        fi
        ;;
esac

echo "start_server.sh: $python whisper_server.py ${flags[*]} $*" >&2
exec "$python" whisper_server.py "${flags[@]}" "$@"
