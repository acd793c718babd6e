#!/usr/bin/env bash
# setup_service.sh - install whisper_server.py as the systemd service "whisper-stt" (run as root).
#
# Usage: sudo ./setup_service.sh [options] [-- extra server flags...]
#   --mode ws|wss|both   server mode (default: ws)
#   --ws-port N          plain port (default: 8765)
#   --wss-port N         TLS port (default: 8766)
#   --user NAME          run as this existing user instead of the system user "whisper-stt"
#                        (which is created when missing)
#   --no-start           only write the unit and run daemon-reload (no enable, no start)
#   --print              print the rendered unit and exit (no root, no systemd needed)
#   --uninstall          stop, disable and remove the service (files in this folder are kept)
#   e.g. sudo ./setup_service.sh --mode both -- --model small --log-level info
#
# The unit is rendered from ./whisper-stt.service with this folder's absolute path and written to
# /etc/systemd/system/whisper-stt.service. The service user gets write access to what the server
# writes here: api_keys.json, models/, debug_audio/ (and the folder itself, for atomic key-file saves).
# Run ./install.sh first: the unit starts .venv/bin/python.
set -euo pipefail

orig_args=("$@")
APP_DIR="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
cd "$APP_DIR"

SERVICE_NAME="whisper-stt"
DEFAULT_USER="whisper-stt"
TEMPLATE="$APP_DIR/whisper-stt.service"
PLACEHOLDER_DIR="/opt/whisper-stt"
UNIT_PATH="/etc/systemd/system/${SERVICE_NAME}.service"

mode="ws"
ws_port="8765"
wss_port="8766"
service_user=""
do_start=1
print_only=0
uninstall=0
extra_flags=()

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

info() { printf '==> %s\n' "$*"; }

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --mode) need_value "$@"; mode="$2"; shift ;;
        --mode=*) mode="${1#*=}" ;;
        --ws-port) need_value "$@"; ws_port="$2"; shift ;;
        --ws-port=*) ws_port="${1#*=}" ;;
        --wss-port) need_value "$@"; wss_port="$2"; shift ;;
        --wss-port=*) wss_port="${1#*=}" ;;
        --user) need_value "$@"; service_user="$2"; shift ;;
        --user=*) service_user="${1#*=}" ;;
        --no-start) do_start=0 ;;
        --print) print_only=1 ;;
        --uninstall) uninstall=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra_flags=("$@"); break ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

case "$mode" in
    ws | wss | both) ;;
    *) die "--mode must be ws, wss or both (got '$mode')" ;;
esac
for port in "$ws_port" "$wss_port"; do
    case "$port" in
        '' | *[!0-9]*) die "ports must be numbers (got '$port')" ;;
    esac
    if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "port out of range: $port"
    fi
done
# systemd splits unit settings on whitespace and expands % specifiers: keep the path simple
case "$APP_DIR" in
    *[[:space:]]* | *%* | *\"* | *\'* | *\\*)
        die "the folder path '$APP_DIR' contains spaces, quotes, '%' or '\\'; move the repository (e.g. to /opt/whisper-stt)" ;;
esac
for flag in "${extra_flags[@]}"; do
    case "$flag" in
        *[[:space:]]* | *%* | *\"* | *\'* | *\\*) die "extra server flag '$flag' contains characters systemd would misread" ;;
    esac
done

user="${service_user:-$DEFAULT_USER}"
if id -u "$user" >/dev/null 2>&1; then
    group="$(id -gn "$user")"
else
    group="$user" # useradd --system creates a group of the same name
fi

server_flags=(--mode "$mode")
case "$mode" in
    ws) server_flags+=(--ws-port "$ws_port") ;;
    wss) server_flags+=(--wss-port "$wss_port") ;;
    both) server_flags+=(--ws-port "$ws_port" --wss-port "$wss_port") ;;
esac
if [ "$mode" != ws ]; then
    server_flags+=(--ssl-key "$APP_DIR/key.pem" --ssl-cert "$APP_DIR/cert.pem")
fi
server_flags+=("${extra_flags[@]}")

render_unit() {
    [ -f "$TEMPLATE" ] || die "template $TEMPLATE not found"
    local line low_port=0
    if { [ "$mode" != wss ] && [ "$ws_port" -lt 1024 ]; } || { [ "$mode" != ws ] && [ "$wss_port" -lt 1024 ]; }; then
        low_port=1
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            User=*) line="User=$user" ;;
            Group=*) line="Group=$group" ;;
            ExecStart=*) line="ExecStart=$APP_DIR/.venv/bin/python $APP_DIR/whisper_server.py ${server_flags[*]}" ;;
            *) line="${line//"$PLACEHOLDER_DIR"/"$APP_DIR"}" ;;
        esac
        printf '%s\n' "$line"
        if [ "$low_port" -eq 1 ] && [ "${line%%=*}" = "NoNewPrivileges" ]; then
            printf '%s\n' "# a port below 1024 needs this capability when not running as root"
            printf '%s\n' "AmbientCapabilities=CAP_NET_BIND_SERVICE"
        fi
    done <"$TEMPLATE"
}

if [ "$print_only" -eq 1 ]; then
    render_unit
    exit 0
fi

# --- everything below changes the system ------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    die "this must run as root: sudo $0 ${orig_args[*]}   (or --print to only see the unit)"
fi
command -v systemctl >/dev/null 2>&1 \
    || die "systemctl not found: this machine does not use systemd. Use ./run_forever.sh (e.g. inside screen) instead, or --print to see the unit"
if [ ! -d /run/systemd/system ]; then
    die "systemd is not running here (containers and WSL often lack it). Use ./run_forever.sh instead, or --print to see the unit"
fi

if [ "$uninstall" -eq 1 ]; then
    info "Stopping and removing $SERVICE_NAME"
    systemctl disable --now "$SERVICE_NAME" 2>/dev/null || true
    rm -f "$UNIT_PATH"
    systemctl daemon-reload
    info "Removed. The user '$user' and the files in $APP_DIR were left in place."
    exit 0
fi

[ -x "$APP_DIR/.venv/bin/python" ] || die "$APP_DIR/.venv is missing: run ./install.sh first"
[ -f "$APP_DIR/whisper_server.py" ] || die "whisper_server.py not found in $APP_DIR"

if [ -z "$service_user" ] && ! id -u "$user" >/dev/null 2>&1; then
    info "Creating system user $user"
    useradd --system --no-create-home --home-dir "$APP_DIR" --shell /usr/sbin/nologin "$user"
    group="$(id -gn "$user")"
elif ! id -u "$user" >/dev/null 2>&1; then
    die "user '$user' does not exist"
fi

if [ "$mode" != ws ] && { [ ! -e "$APP_DIR/key.pem" ] || [ ! -e "$APP_DIR/cert.pem" ]; }; then
    info "Creating a self-signed certificate (key.pem, cert.pem)"
    "$APP_DIR/.venv/bin/python" "$APP_DIR/generate_ssl_cert.py" --key "$APP_DIR/key.pem" --cert "$APP_DIR/cert.pem" \
        "$(hostname)" || die "could not create key.pem/cert.pem"
fi

info "Giving $user:$group write access to the server's files"
mkdir -p "$APP_DIR/models" "$APP_DIR/debug_audio"
chown -R "$user:$group" "$APP_DIR/models" "$APP_DIR/debug_audio"
for file in "$APP_DIR"/api_keys.json "$APP_DIR"/api_keys.json.* "$APP_DIR/key.pem" "$APP_DIR/cert.pem"; do
    if [ -e "$file" ]; then
        chown "$user:$group" "$file"
    fi
done
# the key file is replaced atomically (temporary file + rename), which needs write access to the folder
if [ "$(stat -c %U "$APP_DIR")" != "$user" ]; then
    chgrp "$group" "$APP_DIR"
    chmod g+rwx "$APP_DIR"
fi
if command -v runuser >/dev/null 2>&1 && ! runuser -u "$user" -- test -r "$APP_DIR/whisper_server.py"; then
    die "user '$user' cannot read $APP_DIR (a parent folder such as /root or /home/<name> is closed to others). Move the repository to e.g. /opt/whisper-stt, or use --user <owner>"
fi

info "Writing $UNIT_PATH"
tmp_unit="$(mktemp "${UNIT_PATH}.XXXXXX")"
trap 'rm -f "$tmp_unit"' EXIT
render_unit >"$tmp_unit"
chmod 0644 "$tmp_unit"
mv -f "$tmp_unit" "$UNIT_PATH"
trap - EXIT

systemctl daemon-reload
if [ "$do_start" -eq 1 ]; then
    info "Enabling and starting $SERVICE_NAME"
    systemctl enable "$SERVICE_NAME"
    # restart, not start: running the script again applies a changed configuration
    systemctl restart "$SERVICE_NAME"
    sleep 2
    systemctl --no-pager --lines=15 status "$SERVICE_NAME" || true
    echo
    echo "The first start prints the admin key and a default API key once:"
    echo "    journalctl -u $SERVICE_NAME --no-pager | grep -i key"
else
    info "Installed but not started (--no-start). Start it with: systemctl enable --now $SERVICE_NAME"
fi
echo "Follow the log:   journalctl -u $SERVICE_NAME -f"
echo "Remove it again:  sudo $0 --uninstall"
