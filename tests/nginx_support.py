"""A real nginx from deploy/nginx.conf in front of whisper-stt replicas on this machine, for tests.

``NginxProxy(upstream_ports, workdir)`` renders the production file with only these changes: the
upstream ``server`` lines point at ``127.0.0.1:<port>`` (each keeps the production line's
``max_fails``/``fail_timeout``), ``listen`` is ``127.0.0.1:<free port>``, the pid file, both logs and
nginx's temp directories live in ``workdir``, and ``user`` is dropped (``root`` when the tests run as
root, so its workers can reach a private temp dir). ``check()`` runs ``nginx -t``; ``start()`` runs
nginx in the foreground (``daemon off``) and waits until it accepts connections; ``stop()`` ends it.

    with NginxProxy([port1, port2], tmp_path / "nginx") as proxy:
        httpx.get(proxy.url + "/health")
        websockets.connect(proxy.ws_url + "/ws/transcribe")
        proxy.access_log()
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def find_nginx() -> Optional[str]:
    """The nginx binary (Debian puts it in /usr/sbin, which a normal user's PATH may lack)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sub_one(pattern: str, repl, text: str) -> str:
    """re.sub that insists the production file still has exactly one such line."""
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n != 1:
        raise ValueError(f"deploy/nginx.conf: expected one line matching {pattern!r}, found {n}")
    return new


def render(
    upstream_ports: Sequence[int],
    workdir: Path,
    listen_port: int,
    *,
    host: str = "127.0.0.1",
    hash_key: Optional[str] = None,
    source: Path = NGINX_CONF,
) -> str:
    """deploy/nginx.conf with test upstreams, listen port and paths under workdir (see the module doc).

    hash_key replaces the hash's key (``$remote_addr``), e.g. ``$http_x_client`` to spread clients of
    one address over the replicas by a header."""
    if not upstream_ports:
        raise ValueError("at least one upstream port")
    text = source.read_text()
    servers = re.findall(r"^[ \t]*server[ \t]+\S+:\d+[ \t]+([^;]*);", text, flags=re.MULTILINE)
    if not servers:
        raise ValueError("deploy/nginx.conf: no upstream server lines")
    params = servers[0]
    lines = "".join(f"        server {host}:{port} {params};\n" for port in upstream_ports)
    # all production server lines -> one line per test replica, at the first one's place
    first = True

    def upstream_line(_m: re.Match) -> str:
        nonlocal first
        out, first = (lines if first else ""), False
        return out

    text = re.sub(r"^[ \t]*server[ \t]+\S+:\d+[ \t]+[^;]*;.*\n", upstream_line, text, flags=re.MULTILINE)
    if hash_key is not None:
        text = _sub_one(r"^([ \t]*hash[ \t]+)\S+([ \t]+consistent;)", rf"\g<1>{hash_key}\g<2>", text)
    text = _sub_one(r"^([ \t]*)listen[ \t]+\d+;.*$", rf"\g<1>listen {host}:{listen_port};", text)
    text = _sub_one(r"^user\s+[^;]+;.*$", "user root;" if os.geteuid() == 0 else "", text)
    text = _sub_one(r"^pid\s+[^;]+;", f"pid {workdir / 'nginx.pid'};", text)
    text = _sub_one(r"^error_log\s+\S+", f"error_log {workdir / 'error.log'}", text)
    text = _sub_one(r"^([ \t]*access_log[ \t]+)\S+", rf"\g<1>{workdir / 'access.log'}", text)
    temp = "".join(
        f"    {name}_temp_path {workdir / 'tmp' / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _sub_one(r"^http \{\n", "http {\n" + temp, text)


class NginxProxy:
    """nginx on a free port in front of the given replica ports (rendered from deploy/nginx.conf)."""

    def __init__(
        self,
        upstream_ports: Sequence[int],
        workdir: Path,
        *,
        port: Optional[int] = None,
        hash_key: Optional[str] = None,
    ) -> None:
        binary = find_nginx()
        if binary is None:
            raise FileNotFoundError(
                "nginx is not installed (Debian package nginx; ./run_tests.sh installs it)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.port = port or _free_port()
        self.hash_key = hash_key
        self.upstream_ports = list(upstream_ports)
        self.conf = self.workdir / "nginx.conf"
        self.proc: Optional[subprocess.Popen] = None
        self._write()

    def _write(self) -> None:
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            render(self.upstream_ports, self.workdir, self.port, hash_key=self.hash_key)
        )

    def _cmd(self, *extra: str) -> list[str]:
        # -e: the error log nginx uses before it has read the config (else /var/log/nginx/error.log)
        return [self.binary, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                "-c", str(self.conf), *extra]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def check(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on the rendered file (returncode 0 and "test is successful" when valid)."""
        return subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 20.0) -> "NginxProxy":
        self._log = (self.workdir / "nginx.out").open("wb")
        self.proc = subprocess.Popen(self._cmd("-g", "daemon off;"), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port} within {timeout} s:\n{self.error_log()}")

    def reload(self, upstream_ports: Sequence[int]) -> None:
        """New replica list, same port: rewrite the file and tell the running nginx (SIGHUP)."""
        self.upstream_ports = list(upstream_ports)
        self._write()
        checked = self.check()
        if checked.returncode != 0:
            raise RuntimeError(checked.stderr)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Fast shutdown (SIGTERM: open WebSockets are cut, not waited for)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        paths = (self.workdir / "error.log", self.workdir / "nginx.out")
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def __enter__(self) -> "NginxProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
