"""deploy/kubernetes/ (schema-valid, strict, and consistent with the server), the systemd template unit
for N replicas (systemd-analyze verify), and /health turning 503 while the server drains."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "whisper-stt@.service"
# A version kubernetes-validate ships schemas for, old enough for most clusters in use.
K8S_VERSION = "1.30.0"


# ------------------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------------------


def _docs(name: str) -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _by_kind(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in _docs(name)}


@pytest.mark.parametrize("name", ["redis.yaml", "whisper-stt.yaml", "whisper-stt-worker.yaml", "ingress.yaml"])
def test_manifests_pass_strict_schema_validation(name: str):
    kv = pytest.importorskip("kubernetes_validate")
    docs = _docs(name)
    assert docs
    for doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_kustomization_lists_the_manifests():
    kustomization = _docs("kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == ["redis.yaml", "whisper-stt-worker.yaml", "whisper-stt.yaml"]
    assert all((K8S / r).is_file() for r in kustomization["resources"])


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_deployment_drains_and_finds_redis_and_the_admin_secret():
    app = _by_kind("whisper-stt.yaml")
    deployment, service = app["Deployment"], app["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert app["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()

    (container,) = pod["spec"]["containers"]
    env = _env(container)
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names["http"] == int(env["WHISPER_WS_PORT"]) and env["WHISPER_MODE"] == "ws"
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    # readiness follows /health (503 while draining); liveness does not, so a drain is never restarted
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] != "/health"
    # preStop sleep + the server's grace + a final's worth of margin fit in the termination grace period
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(env["WHISPER_GRACEFUL_SHUTDOWN_S"])
    assert pre_stop + grace + 10 <= pod["spec"]["terminationGracePeriodSeconds"]

    # the state URL names the Redis Service and its port
    redis = _by_kind("redis.yaml")
    redis_service = redis["Service"]
    url = env["WHISPER_STATE_URL"]
    assert url == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    redis_pod = redis["StatefulSet"]["spec"]["template"]
    assert redis_service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()
    assert redis["StatefulSet"]["spec"]["serviceName"] == redis_service["metadata"]["name"]

    # the admin key file is inside the secret's mount, readable by the server's group
    key_file = Path(env["WHISPER_ADMIN_KEY_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    assert Path(mounts[secret_volume]["mountPath"]) == key_file.parent and mounts[secret_volume]["readOnly"]
    assert volumes[secret_volume]["secret"]["defaultMode"] & 0o040
    assert pod["spec"]["securityContext"]["fsGroup"] == pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_workers_share_the_queue_and_the_jobs_volume_with_the_replicas():
    from whisper_stt.config import Settings

    app = _by_kind("whisper-stt.yaml")
    worker = _by_kind("whisper-stt-worker.yaml")["Deployment"]
    pvc = app["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # pods on many nodes mount it at once

    def jobs_mount(deployment: dict) -> tuple[dict, str]:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounted = {m["mountPath"]: claims.get(m["name"]) for m in container["volumeMounts"]}
        assert mounted[env["WHISPER_JOBS_DIR"]] == pvc["metadata"]["name"]  # the jobs dir is the shared volume
        return env, container["image"]

    app_env, app_image = jobs_mount(app["Deployment"])
    worker_env, worker_image = jobs_mount(worker)
    assert worker_image == app_image
    assert worker_env["WHISPER_STATE_URL"] == app_env["WHISPER_STATE_URL"]  # one queue
    assert worker_env["WHISPER_JOBS_DIR"] == app_env["WHISPER_JOBS_DIR"]
    # the variables mean what they say to the server's Settings
    assert Settings(worker=worker_env["WHISPER_WORKER"], job_workers=worker_env["WHISPER_JOB_WORKERS"]).worker
    assert Settings(job_workers=app_env["WHISPER_JOB_WORKERS"]).job_workers == 0  # replicas only accept jobs
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert "ports" not in container  # a worker serves nothing
    assert worker["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


def test_ingress_reaches_the_service_with_stream_friendly_settings():
    ingress = _by_kind("ingress.yaml")["Ingress"]
    service = _by_kind("whisper-stt.yaml")["Service"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert int(notes[prefix + "proxy-read-timeout"]) >= 3600
    assert int(notes[prefix + "proxy-send-timeout"]) >= 3600
    assert notes[prefix + "proxy-request-buffering"] == "off"
    assert int(notes[prefix + "proxy-body-size"].rstrip("m")) >= 135  # base64 of a 100 MB upload
    assert notes[prefix + "upstream-hash-by"]


# ------------------------------------------------------------------------------------------------------
# systemd template unit
# ------------------------------------------------------------------------------------------------------


def _unit_values(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


def test_template_unit_runs_one_replica_per_port_on_shared_state():
    unit = UNIT.read_text()
    (exec_start,) = _unit_values(unit, "ExecStart")
    assert exec_start.startswith("/opt/whisper-stt/.venv/bin/python /opt/whisper-stt/whisper_server.py ")
    assert "--ws-port %i" in exec_start and "--mode ws" in exec_start and "--host 127.0.0.1" in exec_start
    assert _unit_values(unit, "EnvironmentFile") == ["/etc/whisper-stt/replicas.env"]
    assert "WHISPER_ADMIN_KEY_FILE=%d/admin_key" in _unit_values(unit, "Environment")
    shared = (ROOT / "deploy" / "systemd" / "replicas.env").read_text()
    assert any(line.startswith("WHISPER_STATE_URL=redis://") for line in shared.splitlines())
    grace = next(float(line.split("=", 1)[1]) for line in shared.splitlines()
                 if line.startswith("WHISPER_GRACEFUL_SHUTDOWN_S="))
    assert grace + 10 <= float(_unit_values(unit, "TimeoutStopSec")[0])


def test_template_unit_passes_systemd_analyze_verify(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    app, etc, units = tmp_path / "app", tmp_path / "etc", tmp_path / "units"
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (app / ".venv" / "bin" / "python").chmod(0o755)  # systemd-analyze checks that ExecStart exists
    (app / "whisper_server.py").write_text("")
    etc.mkdir()
    shutil.copy(ROOT / "deploy" / "systemd" / "replicas.env", etc / "replicas.env")
    units.mkdir()
    rendered = UNIT.read_text().replace("/opt/whisper-stt", str(app)).replace("/etc/whisper-stt", str(etc))
    for port in ("8001", "8002"):
        unit_file = units / f"whisper-stt@{port}.service"  # an instance of the template
        unit_file.write_text(rendered)
        result = subprocess.run([analyze, "verify", str(unit_file)], capture_output=True, text=True,
                                timeout=60)
        problems = [line for line in (result.stdout + result.stderr).splitlines()
                    if "whisper-stt" in line or "Unknown" in line or "Failed" in line]
        assert result.returncode == 0 and not problems, f"{port}: {result.stdout}{result.stderr}"


# ------------------------------------------------------------------------------------------------------
# /health while draining (what the readiness probe and nginx see)
# ------------------------------------------------------------------------------------------------------


def test_health_is_503_while_draining(make_app):
    handle = make_app()
    with handle.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health").json()["status"] == "healthy"
        handle.app.state.ctx.shutting_down = True  # what SIGTERM's graceful stop sets first
        draining = client.get("/health")
        assert draining.status_code == 503 and draining.json()["status"] == "draining"
        assert draining.json()["model_loaded"] is True
        assert client.get("/").status_code == 200  # the liveness probe's path stays up
