"""Tests for the operator scripts: generate_ssl_cert.py, install.sh, start_server.sh, run_forever.sh,
setup_service.sh and the whisper-stt.service template.

None of them needs the server or a model: the shell scripts run from a copy in tmp_path against fake
interpreters / fake servers, so a test can never touch the real .venv, start a model or install a
service. Every wait has a deadline and every process started here is killed in a ``finally``.
Run: .venv/bin/python -m pytest tests/test_scripts.py -q
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import pty
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHELL_SCRIPTS = sorted(ROOT.glob("*.sh"))
BASH = shutil.which("bash") or "/bin/bash"


def _load_cert_module():
    spec = importlib.util.spec_from_file_location("generate_ssl_cert", ROOT / "generate_ssl_cert.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


certgen = _load_cert_module()


def _copy_app(tmp_path: Path, *names: str) -> Path:
    """A throw-away copy of some top-level files, so scripts run against it instead of the repo."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    for name in names:
        shutil.copy2(ROOT / name, app / name)
    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------------------------------
# static checks
# ------------------------------------------------------------------------------------------------------


def test_expected_scripts_exist_and_are_executable():
    names = ("install.sh", "start_server.sh", "run_forever.sh", "setup_service.sh", "generate_ssl_cert.py")
    for name in names:
        path = ROOT / name
        assert path.is_file(), name
        assert os.access(path, os.X_OK), f"{name} is not executable (chmod +x)"
    assert (ROOT / "whisper-stt.service").is_file()


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script: Path):
    result = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------------
# generate_ssl_cert.py
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tls_echo_server(cert: Path, key: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """A TLS server on a thread that echoes one message per connection; yields its port."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # includes the accept() timeout
                continue
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    data = tls.recv(1024)
                    if data:
                        tls.sendall(data)
            except (ssl.SSLError, OSError):
                pass  # a client that rejected our certificate ends up here
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _tls_roundtrip(port: int, server_hostname: str, cafile: Path, host: str = "127.0.0.1", strict=False):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if strict:  # what Python 3.13+ turns on by default
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(1024)


def _run_certgen(args, cwd: Path, umask: int | None = None):
    cmd = [sys.executable, str(ROOT / "generate_ssl_cert.py"), *args]
    if umask is not None:  # prove the key's mode does not depend on the caller's umask
        cmd = [BASH, "-c", f'umask {umask:03o}; exec "$@"', "certgen", *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One RSA pair made by the command line, with extra names, under a permissive umask."""
    directory = tmp_path_factory.mktemp("tls")
    result = _run_certgen(
        ["--key", "k.pem", "--cert", "c.pem", "stt.example.test", "192.0.2.7", "[2001:db8::5]"],
        cwd=directory,
        umask=0o000,
    )
    assert result.returncode == 0, result.stderr
    return directory / "k.pem", directory / "c.pem", result


def test_certgen_cli_files_modes_and_output(cert_pair):
    key, cert, result = cert_pair
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert str(key.resolve()) in result.stdout and str(cert.resolve()) in result.stdout
    assert "--cacert" in result.stdout  # tells the operator how to trust it
    assert not list(key.parent.glob(".*.tmp")), "temporary files left behind"


def test_certgen_extensions(cert_pair):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID

    _, cert_path, _ = cert_pair
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "stt.example.test"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "192.0.2.7", "2001:db8::5")
    }
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 825 <= lifetime.days <= 826


@pytest.mark.parametrize("strict", [False, True], ids=["default", "x509-strict"])
def test_certgen_pair_verifies_in_real_tls_handshake(cert_pair, strict):
    key, cert, _ = cert_pair
    with tls_echo_server(cert, key) as port:
        for name in ("127.0.0.1", "localhost", "stt.example.test"):
            assert _tls_roundtrip(port, name, cert, strict=strict) == b"ping", name
        # a name that is not in the certificate must be rejected
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_roundtrip(port, "not-in-cert.example", cert, strict=strict)


def test_certgen_pair_verifies_over_ipv6(cert_pair):
    key, cert, _ = cert_pair
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not available here")
    with tls_echo_server(cert, key, host="::1") as port:
        assert _tls_roundtrip(port, "::1", cert, host="::1") == b"ping"


def test_certgen_rejected_by_default_trust_store(cert_pair):
    key, cert, _ = cert_pair
    with tls_echo_server(cert, key) as port:
        ctx = ssl.create_default_context()  # system CAs only: a self-signed cert must fail
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname="localhost")


def test_certgen_refuses_to_overwrite_without_force(tmp_path: Path):
    first = _run_certgen(["--key", "key.pem", "--cert", "cert.pem", "--ec"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key_before = (tmp_path / "key.pem").read_bytes()
    cert_before = (tmp_path / "cert.pem").read_bytes()

    again = _run_certgen(["--key", "key.pem", "--cert", "cert.pem", "--ec"], cwd=tmp_path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "key.pem").read_bytes() == key_before
    assert (tmp_path / "cert.pem").read_bytes() == cert_before

    forced = _run_certgen(["--key", "key.pem", "--cert", "cert.pem", "--ec", "--force"], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "key.pem").read_bytes() != key_before
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_certgen_bad_name_is_a_usage_error(tmp_path: Path):
    result = _run_certgen(["--key", "k.pem", "--cert", "c.pem", "bad name"], cwd=tmp_path)
    assert result.returncode == 2
    assert "bad name" in result.stderr
    assert not (tmp_path / "k.pem").exists() and not (tmp_path / "c.pem").exists()


def test_generate_self_signed_function(tmp_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key, cert = certgen.generate_self_signed(
        tmp_path / "sub" / "key.pem", tmp_path / "sub" / "cert.pem", names=["10.1.2.3"], days=30, use_ec=True
    )
    assert key == tmp_path / "sub" / "key.pem" and cert.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    assert isinstance(loaded.public_key(), ec.EllipticCurvePublicKey)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)

    with pytest.raises(FileExistsError):
        certgen.generate_self_signed(key, cert, use_ec=True)

    # only the certificate exists: nothing is written, no stray key is left behind
    lone_cert = tmp_path / "lone_cert.pem"
    lone_cert.write_text("placeholder")
    with pytest.raises(FileExistsError):
        certgen.generate_self_signed(tmp_path / "lone_key.pem", lone_cert, use_ec=True)
    assert not (tmp_path / "lone_key.pem").exists()
    assert lone_cert.read_text() == "placeholder"


# ------------------------------------------------------------------------------------------------------
# install.sh
# ------------------------------------------------------------------------------------------------------


def _fake_python(path: Path, venv_works: bool, version_ok: bool = True) -> Path:
    """A stand-in for python3 that answers the version check and fails or fakes `-m venv`."""
    venv_result = "exit 0" if venv_works else 'echo "ensurepip is not available" >&2; exit 1'
    return _write_exe(
        path,
        f"""#!/usr/bin/env bash
case "$1" in
    -V) echo "Python {"3.11.0" if version_ok else "3.8.10"}" ;;
    -c) exit {0 if version_ok else 1} ;;
    -m) if [ "$2" = venv ]; then mkdir -p "${{!#}}/bin"; {venv_result}; fi ;;
esac
""",
    )


def test_install_sh_explains_missing_venv_module(tmp_path: Path):
    app = _copy_app(tmp_path, "install.sh")
    (app / "requirements.txt").write_text("")
    fake = _fake_python(tmp_path / "python3-no-venv", venv_works=False)
    result = subprocess.run(
        [str(app / "install.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHON": str(fake)},
    )
    assert result.returncode == 1
    assert "python3-venv" in result.stderr
    assert not (app / ".venv").exists(), "the half-made venv must be removed"


def test_install_sh_rejects_old_python_and_bad_option(tmp_path: Path):
    app = _copy_app(tmp_path, "install.sh")
    fake = _fake_python(tmp_path / "python3-old", venv_works=True, version_ok=False)
    result = subprocess.run(
        [str(app / "install.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHON": str(fake)},
    )
    assert result.returncode == 1
    assert "3.8.10" in result.stderr and "3.10" in result.stderr

    result = subprocess.run([str(app / "install.sh"), "--bogus"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "unknown option" in result.stderr


def test_install_sh_creates_venv_idempotently_and_prepares_model(tmp_path: Path):
    app = _copy_app(tmp_path, "install.sh")
    (app / "requirements.txt").write_text("")  # nothing to download
    (app / "requirements-dev.txt").write_text("")
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)

    # without whisper_stt.models the model step is skipped with a note
    first = subprocess.run(
        [str(app / "install.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert (app / ".venv" / "bin" / "python").exists()
    assert "skipping the model step" in first.stdout

    package = app / "whisper_stt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from pathlib import Path\n"
        "def ensure_bundled_model(models_dir):\n"
        "    target = Path(models_dir) / 'base'\n"
        "    target.mkdir(parents=True, exist_ok=True)\n"
        "    (target / 'verified').write_text('ok')\n"
        "    return target\n"
    )
    second = subprocess.run(
        [str(app / "install.sh"), "--dev"], cwd="/", capture_output=True, text=True, timeout=120, env=env
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Reusing existing virtual environment" in second.stdout
    assert "requirements-dev.txt" in second.stdout
    assert (app / "models" / "base" / "verified").read_text() == "ok"

    # a failing model step is an error, not a silent skip
    (package / "models.py").write_text("def ensure_bundled_model(models_dir):\n    raise SystemExit(3)\n")
    third = subprocess.run(
        [str(app / "install.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert third.returncode == 1
    assert "bundled model could not be prepared" in third.stderr


# ------------------------------------------------------------------------------------------------------
# start_server.sh
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def start_app(tmp_path: Path):
    """A copy of start_server.sh with a fake interpreter that records how it was called."""
    app = _copy_app(tmp_path, "start_server.sh", "generate_ssl_cert.py")
    (app / "whisper_server.py").write_text("raise SystemExit('the fake python must not run this')\n")
    record = tmp_path / "calls.txt"
    fake = _write_exe(
        tmp_path / "fake-python",
        f"""#!/usr/bin/env bash
if [ "${{1:-}}" = generate_ssl_cert.py ]; then exec "{sys.executable}" "$@"; fi
{{ echo "pid=$$"; printf 'arg=%s\\n' "$@"; }} >>"{record}"
""",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WS_PORT", "WSS_PORT", "SSL_KEY", "SSL_CERT")}
    env["SERVER_PYTHON"] = str(fake)
    return app, record, env


def _calls(record: Path) -> tuple[int, list[str]]:
    lines = record.read_text().splitlines()
    pid = int(lines[0].removeprefix("pid="))
    return pid, [line.removeprefix("arg=") for line in lines[1:]]


def test_start_server_bogus_mode_fails_with_message(start_app):
    app, record, env = start_app
    result = subprocess.run(
        [str(app / "start_server.sh"), "bogus"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode != 0
    assert "unknown mode 'bogus'" in result.stderr
    assert not record.exists(), "the server must not be started"


def test_start_server_without_terminal_defaults_to_ws_and_execs(start_app):
    app, record, env = start_app
    proc = subprocess.Popen(
        [str(app / "start_server.sh")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    pid, args = _calls(record)
    assert args == ["whisper_server.py", "--mode", "ws", "--ws-port", "8765"]
    assert pid == proc.pid, "start_server.sh must exec the server (same pid) so signals reach it"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("ws", ["--mode", "ws", "--ws-port", "9001"]),
        ("noauth", ["--mode", "ws", "--ws-port", "9001", "--no-auth"]),
        ("5", ["--mode", "ws", "--ws-port", "9001", "--no-auth"]),
    ],
)
def test_start_server_modes_ports_and_extra_flags(start_app, mode, expected):
    app, record, env = start_app
    env = {**env, "WS_PORT": "9001", "WSS_PORT": "9002"}
    result = subprocess.run(
        [str(app / "start_server.sh"), mode, "--model", "tiny"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    _, args = _calls(record)
    assert args == ["whisper_server.py", *expected, "--model", "tiny"]


def test_start_server_tls_modes_make_a_certificate_once(start_app):
    app, record, env = start_app
    result = subprocess.run(
        [str(app / "start_server.sh"), "debug"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (app / "key.pem").is_file() and (app / "cert.pem").is_file()
    assert stat.S_IMODE((app / "key.pem").stat().st_mode) == 0o600
    _, args = _calls(record)
    assert args == [
        "whisper_server.py",
        "--mode",
        "both",
        "--ws-port",
        "8765",
        "--wss-port",
        "8766",
        "--ssl-key",
        "./key.pem",
        "--ssl-cert",
        "./cert.pem",
        "--debug",
    ]

    cert_before = (app / "cert.pem").read_bytes()
    record.unlink()
    result = subprocess.run(
        [str(app / "start_server.sh"), "wss"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (app / "cert.pem").read_bytes() == cert_before, "an existing certificate must be reused"
    _, args = _calls(record)
    assert args[:3] == ["whisper_server.py", "--mode", "wss"]

    # half a pair is an error with advice, not a silent overwrite
    (app / "key.pem").unlink()
    record.unlink()
    result = subprocess.run(
        [str(app / "start_server.sh"), "both"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0
    assert "only one of" in result.stderr and "--force" in result.stderr
    assert not record.exists()


def test_start_server_menu_on_a_terminal(start_app):
    app, record, env = start_app
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(app / "start_server.sh")],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            os.write(master, b"7\n3\n")  # an invalid choice first, then "Both"
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    assert "1) WS" in out and "5) No-auth" in out
    assert "Please type a number" in out
    _, args = _calls(record)
    assert args[:3] == ["whisper_server.py", "--mode", "both"]


# ------------------------------------------------------------------------------------------------------
# run_forever.sh
# ------------------------------------------------------------------------------------------------------

FAKE_SERVER = r'''
"""Fake server for run_forever.sh tests. argv: port state_dir behaviour...

Every start appends its pid to state_dir/pids. Behaviours (argv[3:], used in order of starts, the last
one repeats): "serve" answers GET / with its pid until SIGTERM (then writes state_dir/got-term-<pid>
and exits 0); "exit:N" exits with code N at once.
"""
import http.server, os, signal, sys
from pathlib import Path

port, state = int(sys.argv[1]), Path(sys.argv[2])
behaviours = sys.argv[3:]
with open(state / "pids", "a") as fh:
    starts = sum(1 for _ in open(state / "pids")) if (state / "pids").exists() else 0
    fh.write(f"{os.getpid()}\n")
behaviour = behaviours[min(starts, len(behaviours) - 1)]
if behaviour.startswith("exit:"):
    sys.exit(int(behaviour[5:]))

def on_term(signum, frame):
    (state / f"got-term-{os.getpid()}").write_text("")
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Forever:
    """run_forever.sh (a copy in tmp_path) driving FAKE_SERVER; cleans up every process it saw."""

    def __init__(self, tmp_path: Path, *behaviours: str, env: dict | None = None) -> None:
        self.app = _copy_app(tmp_path, "run_forever.sh")
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.port = _free_port()
        fake = tmp_path / "fake_server.py"
        fake.write_text(FAKE_SERVER)
        self.log_path = tmp_path / "run_forever.log"
        self.log_file = open(self.log_path, "w")
        full_env = {**os.environ, "SERVER_CMD": f'"{sys.executable}" "{fake}"', **(env or {})}
        self.proc = subprocess.Popen(
            [str(self.app / "run_forever.sh"), str(self.port), str(self.state), *behaviours],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # a stray signal to the test's process group cannot reach it
            # pytest started in the background inherits SIGINT ignored, and bash cannot trap an ignored one
            preexec_fn=_default_sigint,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self) -> list[int]:
        path = self.state / "pids"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n{self.log()}")

    def serving_pid(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1) as response:
                return int(response.read())
        except OSError:
            return None

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            message = f"run_forever.sh did not exit within {timeout}s; log:\n{self.log()}"
            raise AssertionError(message) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.pids():
            if _alive(pid) and "fake_server.py" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        self.log_file.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def forever(tmp_path: Path):
    started: list[Forever] = []

    def start(*behaviours: str, env: dict | None = None) -> Forever:
        runner = Forever(tmp_path, *behaviours, env=env)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


def test_run_forever_restarts_after_kill9_and_stops_on_sigterm(forever):
    rf = forever("serve")
    first = rf.wait_for(rf.serving_pid, 10, "the fake server to answer")
    os.kill(first, signal.SIGKILL)
    second = rf.wait_for(lambda: (p := rf.serving_pid()) and p != first and p, 10, "a restarted server")
    log = rf.log()
    assert "exit code 137 (killed by SIGKILL)" in log
    assert "restart #1 in 1s" in log
    assert len([line for line in log.splitlines() if "restart #" in line]) == 1

    began = time.monotonic()
    rf.proc.send_signal(signal.SIGTERM)
    assert rf.wait_exit(5) == 0
    assert time.monotonic() - began < 3, "stopping must be prompt"
    assert (rf.state / f"got-term-{second}").exists(), "SIGTERM must be forwarded to the server"
    assert not _alive(second)
    assert "not restarting" in rf.log()
    assert rf.pids() == [first, second], "no restart after SIGTERM"


def test_run_forever_ctrl_c_stops_server(forever):
    rf = forever("serve")
    pid = rf.wait_for(rf.serving_pid, 10, "the fake server to answer")
    rf.proc.send_signal(signal.SIGINT)
    assert rf.wait_exit(5) == 0
    assert (rf.state / f"got-term-{pid}").exists()
    assert not _alive(pid)
    assert rf.pids() == [pid]


def test_run_forever_backs_off_exponentially_and_stops_on_exit_0(forever):
    rf = forever("exit:3", "exit:137", "exit:0")
    assert rf.wait_exit(15) == 0
    log = rf.log()
    first_restart = (
        r"^\[[-0-9 :]+\] run_forever: "
        r"server exited with exit code 3 after [01]s; restart #1 in 1s$"
    )
    assert re.search(first_restart, log, re.MULTILINE), log
    assert "restart #2 in 2s" in log
    assert "exit code 0" in log and "not restarting" in log
    assert len(rf.pids()) == 3


def test_run_forever_delay_is_capped(forever):
    rf = forever("exit:1", "exit:1", "exit:0", env={"RESTART_MAX_DELAY": "1"})
    assert rf.wait_exit(15) == 0
    log = rf.log()
    assert "restart #1 in 1s" in log and "restart #2 in 1s" in log
    assert len(rf.pids()) == 3


def test_run_forever_sigterm_during_backoff_is_prompt(forever):
    rf = forever("exit:1", env={"RESTART_MAX_DELAY": "60"})
    rf.wait_for(lambda: "restart #1" in rf.log(), 10, "the first restart line")
    began = time.monotonic()
    rf.proc.send_signal(signal.SIGTERM)
    assert rf.wait_exit(5) == 0
    assert time.monotonic() - began < 0.9, "the back-off sleep must not delay the stop"
    assert "during back-off" in rf.log()
    assert len(rf.pids()) == 1


def test_run_forever_does_not_retry_usage_errors(forever):
    rf = forever("exit:2")
    assert rf.wait_exit(10) == 2
    assert "RESTART_STOP_CODES" in rf.log()
    assert len(rf.pids()) == 1


# ------------------------------------------------------------------------------------------------------
# setup_service.sh + whisper-stt.service
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def service_app(tmp_path: Path) -> Path:
    app = _copy_app(tmp_path, "setup_service.sh", "whisper-stt.service")
    (app / "whisper_server.py").write_text("")
    bin_dir = app / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    _write_exe(bin_dir / "python", "#!/bin/sh\nexit 0\n")  # systemd-analyze checks ExecStart exists
    return app


def _render(app: Path, *args: str) -> str:
    result = subprocess.run(
        [str(app / "setup_service.sh"), "--print", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _unit_values(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


def test_template_is_a_valid_unit_for_opt():
    unit = (ROOT / "whisper-stt.service").read_text()
    for required in (
        "After=network-online.target",
        "Type=simple",
        "User=whisper-stt",
        "Restart=on-failure",
        "RestartSec=5",
        "StandardOutput=journal",
        "Environment=PYTHONUNBUFFERED=1",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=true",
        "ProtectSystem=full",
        "PrivateTmp=true",
        "WantedBy=multi-user.target",
        "WorkingDirectory=/opt/whisper-stt",
        "ReadWritePaths=/opt/whisper-stt",
    ):
        assert required in unit.splitlines(), required
    assert _unit_values(unit, "ExecStart") == [
        "/opt/whisper-stt/.venv/bin/python /opt/whisper-stt/whisper_server.py --mode ws --ws-port 8765"
    ]


def test_setup_service_print_renders_paths_user_and_flags(service_app: Path):
    app = service_app
    unit = _render(app)
    assert "/opt/whisper-stt" not in unit
    assert _unit_values(unit, "WorkingDirectory") == [str(app)]
    assert _unit_values(unit, "ReadWritePaths") == [str(app)]
    assert _unit_values(unit, "User") == ["whisper-stt"]
    assert _unit_values(unit, "ExecStart") == [
        f"{app}/.venv/bin/python {app}/whisper_server.py --mode ws --ws-port 8765"
    ]
    assert "AmbientCapabilities" not in unit

    unit = _render(
        app,
        "--mode",
        "both",
        "--ws-port",
        "80",
        "--wss-port",
        "8443",
        "--user",
        "nobody",
        "--",
        "--model",
        "small",
    )
    assert _unit_values(unit, "User") == ["nobody"]
    assert _unit_values(unit, "Group") == [
        subprocess.run(["id", "-gn", "nobody"], capture_output=True, text=True).stdout.strip() or "nobody"
    ]
    assert _unit_values(unit, "ExecStart") == [
        f"{app}/.venv/bin/python {app}/whisper_server.py --mode both --ws-port 80 --wss-port 8443 "
        f"--ssl-key {app}/key.pem --ssl-cert {app}/cert.pem --model small"
    ]
    assert _unit_values(unit, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]  # port 80 as non-root


def test_setup_service_rejects_bad_arguments(service_app: Path):
    cases = (
        (["--mode", "tcp"], "--mode must be"),
        (["--ws-port", "http"], "ports must be numbers"),
        (["--frobnicate"], "unknown option"),
        (["--user"], "needs a value"),
    )
    for args, message in cases:
        result = subprocess.run(
            [str(service_app / "setup_service.sh"), "--print", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)


def test_setup_service_needs_root(tmp_path: Path):
    """Without --print the script must refuse to run as a normal user (and change nothing)."""
    if os.geteuid() != 0:
        result = subprocess.run(
            [str(ROOT / "setup_service.sh"), "--no-start"], capture_output=True, text=True, timeout=30
        )
    else:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is missing")
        # a world-readable copy, since the test's tmp_path is private to root
        public = Path(tempfile.mkdtemp(prefix="setup-service-test-"))
        try:
            public.chmod(0o755)
            for name in ("setup_service.sh", "whisper-stt.service"):
                shutil.copy2(ROOT / name, public / name)
            result = subprocess.run(
                [
                    setpriv,
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    BASH,
                    str(public / "setup_service.sh"),
                    "--no-start",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
            )
        finally:
            shutil.rmtree(public, ignore_errors=True)
    assert result.returncode == 1
    assert "must run as root" in result.stderr and "--print" in result.stderr


def test_rendered_unit_passes_systemd_analyze_verify(service_app: Path, tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out_dir = tmp_path / "units"
    out_dir.mkdir()
    for label, args in (("ws", ()), ("both", ("--mode", "both", "--ws-port", "80"))):
        unit_file = out_dir / "whisper-stt.service"
        unit_file.write_text(_render(service_app, *args))
        result = subprocess.run(
            [analyze, "verify", str(unit_file)], capture_output=True, text=True, timeout=60
        )
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "whisper-stt" in line or "Unknown" in line or "Failed" in line
        ]
        assert result.returncode == 0 and not problems, f"{label}: {result.stdout}{result.stderr}"
