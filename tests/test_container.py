"""The container image, built and run the way an operator would, with podman and no registry.

The base image is made from Debian packages (mmdebstrap + podman import), the Dockerfile is built on it
with --build-arg BASE=..., and the container is driven only through its published ports, its volume, a
podman secret and `podman stop`. Images are cached in podman's storage between runs, keyed by the files
they are built from (tests/container_support.py). Deselect with `-m "not container"`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from whisper_stt.audio import decode_file, float32_to_pcm16

from .container_support import (
    REPO, Podman, ensure_app_image, ensure_base_image, ensure_services_image, free_port, missing_tools,
)
from .speech import wer

pytestmark = pytest.mark.container

APP_UID = 10001  # the Dockerfile's ARG APP_UID


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Podman:
    missing = missing_tools()
    if missing:
        pytest.skip(f"container test: {', '.join(missing)} not installed (Debian: apt-get install podman "
                    "runc mmdebstrap, which ./run_tests.sh does when run as root)")
    podman = Podman(tmp_path_factory.mktemp("containers"))
    problem = podman.problem()
    if problem:
        pytest.skip(f"container test: podman cannot run containers here: {problem}")
    return podman


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    base, _ = ensure_base_image(podman, log=print)
    tag, _ = ensure_app_image(podman, base, log=print)
    return tag


def test_image_config(podman: Podman, image: str):
    info = podman.inspect_image(image)
    config = info["Config"]
    assert config["User"] == "whisper"
    assert {"8765/tcp", "8766/tcp"} <= set(config["ExposedPorts"])
    assert list(config["Volumes"]) == ["/data"]
    assert info["Healthcheck"]["Test"][-1].endswith("healthcheck.py")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["WHISPER_KEY_FILE"].startswith("/data/") and env["WHISPER_DEBUG_DIR"].startswith("/data/")
    assert not any(name.startswith("PIP_CERT") or name.startswith("PIP_INDEX") for name in env)


def test_healthcheck_probes_the_configured_port():
    spec = importlib.util.spec_from_file_location("healthcheck", REPO / "deploy" / "healthcheck.py")
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert healthcheck.health_url({})[0] == "http://127.0.0.1:8765/health"
    assert healthcheck.health_url({"WHISPER_MODE": "ws", "WHISPER_WS_PORT": "9000"})[0] == \
        "http://127.0.0.1:9000/health"
    url, ctx = healthcheck.health_url({"WHISPER_MODE": "wss", "WHISPER_WSS_PORT": "9443"})
    assert url == "https://127.0.0.1:9443/health" and ctx is not None


class Container:
    """One `podman run -d` with its volume and secret; everything is removed in close()."""

    def __init__(self, podman: Podman, image: str, tmp_path: Path) -> None:
        self.podman = podman
        self.name = f"whisper-stt-test-{uuid.uuid4().hex[:8]}"
        self.volume = self.name + "-data"
        self.secret = self.name + "-admin"
        self.admin_key = "sk-admin-" + secrets.token_hex(16)
        self.ws_port, self.wss_port = free_port(), free_port()
        self.certs = tmp_path / "certs"
        self.certs.mkdir()
        subprocess.run([sys.executable, str(REPO / "generate_ssl_cert.py"), "-q",
                        "--key", str(self.certs / "key.pem"), "--cert", str(self.certs / "cert.pem")],
                       check=True, timeout=120)
        for pem in self.certs.iterdir():  # as the README says: readable by the image's user
            if os.geteuid() == 0:
                os.chown(pem, APP_UID, -1)
            else:
                pem.chmod(0o644)  # a throwaway key
        key_file = tmp_path / "admin_key"
        key_file.write_text(self.admin_key + "\n")
        podman.run("secret", "create", self.secret, str(key_file))
        podman.run("volume", "create", self.volume)
        podman.run(
            "run", "-d", "--name", self.name,
            "-p", f"127.0.0.1:{self.ws_port}:8765", "-p", f"127.0.0.1:{self.wss_port}:8766",
            "-v", f"{self.volume}:/data", "-v", f"{self.certs}:/certs:ro",
            "--secret", self.secret, "-e", f"WHISPER_ADMIN_KEY_FILE=/run/secrets/{self.secret}",
            "-e", "WHISPER_MODE=both", "-e", "WHISPER_SSL_KEY=/certs/key.pem",
            "-e", "WHISPER_SSL_CERT=/certs/cert.pem", "-e", "WHISPER_MAX_CONNECTIONS=7",
            # no systemd here to schedule health probes; `podman healthcheck run` probes on demand
            "--health-interval", "disable",
            image, "--generate-key", "ci",
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"

    def logs(self) -> str:
        proc = self.podman.run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict:
        return json.loads(self.podman.run("inspect", self.name).stdout)[0]["State"]

    def wait_ready(self, limit_s: float = 300) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                raise AssertionError(f"container exited before /health answered:\n{self.logs()}")
            try:
                r = httpx.get(self.base + "/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if r.status_code == 200:
                return
            if r.status_code >= 500 and r.status_code != 503:  # up but broken: no use waiting
                raise AssertionError(f"/health answered {r.status_code}:\n{self.logs()[-5000:]}")
            time.sleep(0.5)
        raise AssertionError(f"/health did not answer within {limit_s} s:\n{self.logs()}")

    def exec(self, *cmd: str) -> str:
        return self.podman.run("exec", self.name, *cmd).stdout

    def close(self) -> None:
        self.podman.run("rm", "--force", "--volumes", "--time", "0", self.name, check=False)
        self.podman.run("volume", "rm", "--force", self.volume, check=False)
        self.podman.run("secret", "rm", self.secret, check=False)


@pytest.fixture
def container(podman: Podman, image: str, tmp_path: Path):
    ctr = Container(podman, image, tmp_path)
    try:
        yield ctr
    finally:
        ctr.close()


def _stream_then_stop(ctr: Container, api_key: str, pcm: bytes) -> tuple[list[dict], int, int]:
    """Leave an utterance open on a WebSocket, `podman stop` the container, collect what arrives."""

    async def run():
        messages: list[dict] = []
        url = f"ws://127.0.0.1:{ctr.ws_port}/ws/transcribe"
        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send(json.dumps({"api_key": api_key}))
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))  # auth
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))  # connected
            await ws.send(json.dumps({"command": "start", "language": "en", "audio_format": "pcm16"}))
            for i in range(0, len(pcm), 6400):  # no trailing silence: the utterance stays open
                await ws.send(pcm[i:i + 6400])
            await asyncio.sleep(1.0)
            # podman stop sends the image's STOPSIGNAL (SIGTERM) and SIGKILLs after --time seconds
            stop = await asyncio.create_subprocess_exec(
                "podman", "stop", "--time", "60", ctr.name, env=ctr.podman.env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else -1
            return messages, code, await asyncio.wait_for(stop.wait(), 90)

    return asyncio.run(run())


def test_container_serves_transcribes_and_drains(container: Container, librivox):
    ctr = container
    ctr.wait_ready()
    log = ctr.logs()
    api_key = re.search(r"Default API key \(X-API-Key\): (sk-[0-9a-f]{48})", log).group(1)
    assert ctr.admin_key not in log and "Admin key (X-Admin-Key)" not in log  # given, so never printed

    # configuration from WHISPER_* variables; both ports, TLS from the mounted certificate
    status = httpx.get(ctr.base + "/").json()
    assert status["model"] == "base" and status["device"] == "cpu" and status["connections"] == "0/7"
    trust = ssl.create_default_context(cafile=str(ctr.certs / "cert.pem"))
    tls = httpx.get(f"https://127.0.0.1:{ctr.wss_port}/health", verify=trust)
    assert tls.status_code == 200 and tls.json()["model_loaded"] is True

    # real speech through the published port
    refs, hyps = [], []
    for clip in librivox:
        with clip.path.open("rb") as fh:
            r = httpx.post(ctr.base + "/transcribe", headers={"X-API-Key": api_key},
                           files={"file": (clip.path.name, fh, "audio/wav")}, timeout=120)
        assert r.status_code == 200, r.text
        refs.append(clip.text)
        hyps.append(r.json()["text"])
    assert wer(" ".join(refs), " ".join(hyps)) <= 0.10, hyps

    # the admin key came from the podman secret
    keys = httpx.get(ctr.base + "/admin/keys", headers={"X-Admin-Key": ctr.admin_key})
    assert keys.status_code == 200 and keys.json()["total"] == 2
    assert httpx.get(ctr.base + "/admin/keys", headers={"X-Admin-Key": api_key}).status_code == 403

    # the server is PID 1 (so it gets SIGTERM itself) and not root
    proc1 = ctr.exec("cat", "/proc/1/status", "/proc/1/cmdline")
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", proc1, re.M).groups()
    assert set(uids) == {str(APP_UID)}, proc1
    assert "whisper_server.py" in proc1
    assert ctr.podman.run("healthcheck", "run", ctr.name, check=False).returncode == 0

    # state lives in the volume, written by the server's user, hashes only
    mount = Path(json.loads(ctr.podman.run("volume", "inspect", ctr.volume).stdout)[0]["Mountpoint"])
    store = mount / "api_keys.json"
    assert store.stat().st_uid == APP_UID and store.stat().st_mode & 0o077 == 0
    assert api_key not in store.read_text() and ctr.admin_key not in store.read_text()

    # SIGTERM drains: the open utterance arrives as a final, the socket closes 1001, exit status 0
    clip = librivox[0]
    pcm = float32_to_pcm16(decode_file(str(clip.path)))
    messages, close_code, stop_rc = _stream_then_stop(ctr, api_key, pcm)
    assert messages[0].get("type") == "auth" and messages[0].get("status") == "success", messages[0]
    assert stop_rc == 0 and close_code == 1001, (stop_rc, close_code, messages)
    finals = [m for m in messages if m.get("type") == "final"]
    assert finals and wer(clip.text, " ".join(f["text"] for f in finals)) <= 0.2, messages
    state = ctr.state()
    log = ctr.logs()
    assert state["Running"] is False and state["ExitCode"] == 0, (state, log[-3000:])  # 137 = SIGKILLed
    assert "Received SIGTERM" in log and "Traceback" not in log


COMPOSE_SINGLE = REPO / "deploy" / "compose.single.yaml"
COMPOSE_SCALED = REPO / "deploy" / "compose.yaml"


def _compose_config(path: Path) -> dict:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (Debian: apt-get install docker-compose), compose files not "
                    "validated")
    proc = subprocess.run([tool, "-f", str(path), "config"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, env={**os.environ, "WHISPER_MODE": "ws"})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _data_volume(service: dict):
    """The named volume a compose service mounts at /data (None without one)."""
    for v in service.get("volumes", []):
        if isinstance(v, dict) and v.get("target") == "/data":
            return v.get("source")
        if isinstance(v, str) and v.split(":")[1:2] == ["/data"]:
            return v.split(":")[0]
    return None


def test_compose_files_are_valid():
    """docker-compose (Debian's, v1) validates against the compose schema without a daemon."""
    service = _compose_config(COMPOSE_SINGLE)["services"]["whisper"]
    assert {"8765", "8766"} <= {str(p["target"] if isinstance(p, dict) else p).split(":")[-1]
                                for p in service["ports"]}
    assert any(str(v).endswith(":/data:rw") or (isinstance(v, dict) and v.get("target") == "/data")
               for v in service["volumes"]), service["volumes"]
    assert service["environment"]["WHISPER_ADMIN_KEY_FILE"] == "/run/secrets/admin_key"

    services = _compose_config(COMPOSE_SCALED)["services"]
    assert set(services) == {"replica-1", "replica-2", "worker", "redis", "nginx"}
    # jobs: the worker reads the uploads the replicas store, from the same volume, and takes them from
    # the same queue; the replicas only accept jobs
    worker = services["worker"]
    assert worker["environment"]["WHISPER_WORKER"] == "true" and "ports" not in worker
    assert worker["environment"]["WHISPER_STATE_URL"] == "redis://redis:6379/0"
    for name in ("replica-1", "replica-2"):
        assert services[name]["environment"]["WHISPER_JOB_WORKERS"] == "0"
        assert _data_volume(services[name]) == _data_volume(worker) is not None
    # the names deploy/nginx.conf's upstream expects
    upstream = re.findall(r"^\s*server\s+([\w.-]+):8765", (REPO / "deploy" / "nginx.conf").read_text(), re.M)
    assert sorted(upstream) == ["replica-1", "replica-2"]
    for name in upstream:
        env = services[name]["environment"]
        assert env["WHISPER_STATE_URL"] == "redis://redis:6379/0" and "ports" not in services[name]


class Compose:
    """podman-compose on one of the compose files, with the test's images and a throwaway secret."""

    def __init__(self, podman: Podman, path: Path, tmp_path: Path, **env: str) -> None:
        tool = shutil.which("podman-compose")
        if tool is None:
            pytest.skip("podman-compose not installed (Debian: apt-get install podman-compose)")
        self.podman = podman
        self.project = f"wsttest{uuid.uuid4().hex[:8]}"
        self.admin_key = "sk-admin-" + secrets.token_hex(16)
        secret = tmp_path / "admin_key"
        secret.write_text(self.admin_key + "\n")
        if os.geteuid() == 0:  # as the compose files' comments say
            os.chown(secret, APP_UID, -1)
            secret.chmod(0o400)
        else:
            secret.chmod(0o444)
        self.env = {**podman.env, "WHISPER_ADMIN_KEY_SECRET": str(secret), **env}
        self.cmd = [tool, "-p", self.project, "-f", str(path)]

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.cmd, *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def wait_http(self, url: str, limit_s: float = 300) -> httpx.Response:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url, timeout=2)
                if r.status_code == 200:
                    return r
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{url} not 200 within {limit_s} s:\n{self('logs').stdout[-5000:]}")

    def down(self) -> None:
        # rm --volumes first: `down -v` leaves the anonymous /data volumes of the image's VOLUME behind
        names = self.podman.run("ps", "-a", "--quiet", "--filter", f"label=io.podman.compose.project={self.project}",
                                check=False).stdout.split()
        if names:
            self.podman.run("rm", "--force", "--volumes", "--time", "0", *names, check=False)
        self("down", "-v")
        self.podman.run("network", "rm", "--force", f"{self.project}_default", check=False)
        volumes = self.podman.run("volume", "ls", "--quiet", "--filter", f"name={self.project}_",
                                  check=False).stdout.split()
        if volumes:
            self.podman.run("volume", "rm", "--force", *volumes, check=False)


def test_compose_single_under_podman(podman: Podman, image: str, tmp_path: Path):
    """compose.single.yaml as shipped, brought up by podman-compose on the image built above."""
    port = free_port()
    compose = Compose(podman, COMPOSE_SINGLE, tmp_path, WHISPER_STT_IMAGE=image,
                      WHISPER_WS_PUBLISH=f"127.0.0.1:{port}", WHISPER_WSS_PUBLISH=f"127.0.0.1:{free_port()}",
                      WHISPER_MAX_CONNECTIONS="9", WHISPER_MODE="ws")
    try:
        up = compose("up", "-d", "--no-build")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        status = compose.wait_http(f"http://127.0.0.1:{port}/").json()
        assert status["connections"] == "0/9" and status["model"] == "base"
        keys = httpx.get(f"http://127.0.0.1:{port}/admin/keys", headers={"X-Admin-Key": compose.admin_key})
        assert keys.status_code == 200 and keys.json()["total"] == 1
    finally:
        compose.down()


def test_compose_scale_out_under_podman(podman: Podman, image: str, tmp_path: Path, librivox):
    """compose.yaml: two replicas, Redis and nginx (Debian's, in place of the official images)."""
    services = ensure_services_image(podman, log=print)
    port = free_port()
    compose = Compose(podman, COMPOSE_SCALED, tmp_path, WHISPER_STT_IMAGE=image, REDIS_IMAGE=services,
                      NGINX_IMAGE=services, WHISPER_PUBLISH=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        up = compose("up", "-d", "--no-build")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        compose.wait_http(base + "/health")
        admin = {"X-Admin-Key": compose.admin_key}
        made = httpx.post(base + "/admin/keys/generate", params={"name": "compose"}, headers=admin)
        assert made.status_code == 200, made.text
        api_key = made.json()["api_key"]

        clip = librivox[0]
        with clip.path.open("rb") as fh:
            r = httpx.post(base + "/transcribe", headers={"X-API-Key": api_key},
                           files={"file": (clip.path.name, fh, "audio/wav")}, timeout=120)
        assert r.status_code == 200 and wer(clip.text, r.json()["text"]) <= 0.15, r.text

        # a job: the replicas only accept it (WHISPER_JOB_WORKERS=0), so the worker service transcribes it,
        # reading the upload from the volume they share
        with clip.path.open("rb") as fh:
            r = httpx.post(base + "/v1/jobs", headers={"X-API-Key": api_key},
                           files={"file": (clip.path.name, fh, "audio/wav")}, timeout=60)
        assert r.status_code == 202, r.text
        job_url = f"{base}/v1/jobs/{r.json()['id']}"
        deadline = time.monotonic() + 300  # the worker may still be loading its model
        while True:
            job = httpx.get(job_url, headers={"X-API-Key": api_key}, timeout=10).json()
            if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert job["status"] == "succeeded", (job, compose("logs", "worker").stdout[-3000:])
        assert wer(clip.text, job["result"]["text"]) <= 0.15, job

        # the key made through nginx (on one replica) works on both: they share Redis
        probe = ("import sys, urllib.request; r = urllib.request.Request('http://127.0.0.1:8765/stats', "
                 "headers={'X-API-Key': sys.argv[1]}); print(urllib.request.urlopen(r, timeout=10).status)")
        for replica in ("replica-1", "replica-2"):
            deadline = time.monotonic() + 300
            while True:
                out = podman.run("exec", compose.container(replica), "python", "-c", probe, api_key, check=False)
                if out.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert out.stdout.strip() == "200", (replica, out.stderr[-2000:])
    finally:
        compose.down()
