"""test_transcribe.py (the command-line client) against whisper_server.py running as a real process."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE, decode_file

from .conftest import MODELS_DIR, ROOT, ServerProcess, free_port
from .speech import wer, write_wav

SCRIPT = ROOT / "test_transcribe.py"
KEY_RE = re.compile(r"Default API key \(X-API-Key\): (sk-[0-9a-f]{48})")


class Server:
    def __init__(self, proc: ServerProcess, port: int, api_key: str, cert: Path | None = None) -> None:
        self.proc, self.port, self.api_key, self.cert = proc, port, api_key, cert


@pytest.fixture(scope="module")
def server(tmp_path_factory, librivox):
    """One server (auth on) for the whole module: start-up is the slow part."""
    cwd = tmp_path_factory.mktemp("client_server")
    port = free_port()
    proc = ServerProcess(["--models-dir", str(MODELS_DIR), "--mode", "ws", "--ws-port", str(port),
                          "--host", "127.0.0.1"], cwd)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health")
        yield Server(proc, port, KEY_RE.search(proc.log()).group(1))
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def speech_with_pauses(tmp_path_factory, librivox) -> tuple[Path, str]:
    """Two LibriVox clips with a 2.5 s pause between them (two utterances), as a 16-bit WAV."""
    clips = [librivox[1], librivox[4]]
    gap = np.zeros(int(2.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([gap[:SAMPLE_RATE // 2], decode_file(str(clips[0].path)), gap,
                            decode_file(str(clips[1].path)), gap[:SAMPLE_RATE]])
    path = tmp_path_factory.mktemp("client_audio") / "two_utterances.wav"
    write_wav(path, audio)
    return path, " ".join(c.text for c in clips)


def run_client(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base_env = {k: v for k, v in os.environ.items() if k != "WHISPER_API_KEY"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**base_env, **(env or {})}, stdin=subprocess.DEVNULL,
                          cwd=ROOT)


def texts(output: str) -> list[str]:
    return [line[len("Text: "):] for line in output.splitlines() if line.startswith("Text: ")]


def target(server: Server) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(server.port)]


@pytest.mark.parametrize("mode", ["rest", "ws-file"])
def test_file_modes_print_text_and_timed_segments(server, librivox, mode):
    clip = librivox[0]
    r = run_client(str(clip.path), "--mode", mode, "--language", "en", "--api-key", server.api_key,
                   *target(server))
    assert r.returncode == 0, r.stdout + r.stderr
    [text] = texts(r.stdout)
    assert wer(clip.text, text) <= 0.15, text
    assert re.search(r"^  \[00:00\.\d\d -> 00:0\d\.\d\d\] \S", r.stdout, re.M), r.stdout
    assert "language en" in r.stdout and "duration 7.1" in r.stdout


@pytest.mark.parametrize("fmt", ["pcm16", "float32"])
def test_stream_mode_replays_as_microphone(server, speech_with_pauses, fmt):
    path, reference = speech_with_pauses
    began = time.monotonic()
    r = run_client(str(path), "--mode", "stream", "--format", fmt, "--speed", "4", "--language", "en",
                   "--silence-threshold", "1.0", "--api-key", server.api_key, *target(server))
    elapsed = time.monotonic() - began
    assert r.returncode == 0, r.stdout + r.stderr
    finals = [line for line in r.stdout.splitlines() if line.startswith("FINAL [")]
    assert len(finals) >= 2, r.stdout  # the pause ends the first utterance before stop
    assert any(line.startswith("  ... ") for line in r.stdout.splitlines()), "no partials printed"
    [text] = texts(r.stdout)
    assert wer(reference, text) <= 0.2, text
    assert f"as {fmt}" in r.stdout
    # 12.5 s of audio at x4 takes about 3 s to send: paced, not dumped and not real time.
    assert 2.5 <= elapsed < 60


def test_all_mode_with_key_from_environment(server, librivox):
    clip = librivox[4]
    r = run_client(str(clip.path), "--mode", "all", "--speed", "4", *target(server),
                   env={"WHISPER_API_KEY": server.api_key})
    assert r.returncode == 0, r.stdout + r.stderr
    found = texts(r.stdout)
    assert len(found) == 3, r.stdout
    for text in found:
        assert wer(clip.text, text) <= 0.15, text
    assert "3/3 mode(s) succeeded" in r.stdout


def test_default_mode_without_terminal_runs_rest_and_ws_file(server, librivox):
    r = run_client(str(librivox[1].path), "--api-key", server.api_key, *target(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "##### rest #####" in r.stdout and "##### ws-file #####" in r.stdout
    assert "##### stream" not in r.stdout
    assert len(texts(r.stdout)) == 2


@pytest.mark.parametrize("mode, message", [
    ("rest", "Server error 403: Invalid API key."),
    ("ws-file", "Server error [AUTH_FAILED]: Invalid API key."),
    ("stream", "Server error [AUTH_FAILED]: Invalid API key."),
])
def test_bad_key_fails_with_the_servers_message(server, librivox, mode, message):
    r = run_client(str(librivox[1].path), "--mode", mode, "--api-key", "sk-" + "0" * 48, *target(server))
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
    assert not texts(r.stdout)


def test_missing_key_fails_clearly(server, librivox):
    r = run_client(str(librivox[1].path), "--mode", "rest", *target(server))
    assert r.returncode == 1 and "Server error 401: Missing API key" in r.stderr, r.stderr
    r = run_client(str(librivox[1].path), "--mode", "ws-file", *target(server))
    assert r.returncode == 1 and "requires an API key" in r.stderr and "WHISPER_API_KEY" in r.stderr, r.stderr


def test_undecodable_file_is_a_4xx_with_message(server, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not audio\n" * 50)
    r = run_client(str(junk), "--mode", "rest", "--api-key", server.api_key, *target(server))
    assert r.returncode == 1 and "Server error 400: Could not decode" in r.stderr, r.stderr
    r = run_client(str(junk), "--mode", "ws-file", "--api-key", server.api_key, *target(server))
    assert r.returncode == 1 and "[DECODE_ERROR]" in r.stderr, r.stderr


def test_no_server_and_bad_usage(tmp_path, librivox):
    port = str(free_port())
    for mode in ("rest", "ws-file", "stream"):
        r = run_client(str(librivox[1].path), "--mode", mode, "--port", port, "--api-key", "sk-x", timeout=60)
        assert r.returncode == 1, (mode, r.stdout, r.stderr)
        assert f"127.0.0.1:{port}" in r.stderr and "connection refused" in r.stderr, (mode, r.stderr)
    r = run_client(str(tmp_path / "missing.wav"), "--mode", "rest", "--port", port)
    assert r.returncode == 2 and "file not found" in r.stderr
    r = run_client("--mode", "rest")
    assert r.returncode == 2 and "FILE is required" in r.stderr


def test_tls_with_cafile_and_insecure(tmp_path, librivox):
    sys.path.insert(0, str(ROOT))
    from generate_ssl_cert import generate_self_signed

    key, cert = generate_self_signed(tmp_path / "key.pem", tmp_path / "cert.pem", key_size=2048)
    port = free_port()
    proc = ServerProcess(["--models-dir", str(MODELS_DIR), "--mode", "wss", "--wss-port", str(port),
                          "--host", "127.0.0.1", "--ssl-key", str(key), "--ssl-cert", str(cert), "--no-auth"],
                         tmp_path)
    try:
        proc.wait_http(f"https://127.0.0.1:{port}/health", verify=False)
        clip = librivox[1]
        tls = ["--tls", "--port", str(port)]
        r = run_client(str(clip.path), *tls, "--host", "localhost", "--cafile", str(cert))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "wss://localhost:" in r.stdout and len(texts(r.stdout)) == 2
        assert all(wer(clip.text, t) <= 0.15 for t in texts(r.stdout)), r.stdout
        r = run_client(str(clip.path), *tls, "--insecure", "--mode", "stream", "--speed", "4")
        assert r.returncode == 0, r.stdout + r.stderr
        assert wer(clip.text, texts(r.stdout)[0]) <= 0.15, r.stdout
        r = run_client(str(clip.path), *tls, "--mode", "rest")  # self-signed, no --cafile
        assert r.returncode == 1 and "--cafile" in r.stderr, r.stderr
    finally:
        proc.stop()


def test_interactive_menu_on_a_terminal(server, librivox):
    """No --mode on a terminal: the menu asks for a choice, runs it, and comes back until q."""
    clip = librivox[1]
    pid, fd = pty.fork()
    if pid == 0:  # child: the client on a pseudo-terminal
        env = {k: v for k, v in os.environ.items() if k != "WHISPER_API_KEY"}
        os.execve(sys.executable, [sys.executable, str(SCRIPT), str(clip.path), "--api-key", server.api_key,
                                   *target(server)], env)
    output = b""

    def read_until(marker: bytes, since: int = 0, timeout: float = 60) -> int:
        """Read until ``marker`` appears after offset ``since``; returns the offset after it."""
        nonlocal output
        deadline = time.monotonic() + timeout
        while output.find(marker, since) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {output.decode(errors='replace')}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        at = output.find(marker, since)
        assert at >= 0, f"no {marker!r} in {output.decode(errors='replace')}"
        return at + len(marker)

    try:
        at = read_until(b"Choose [1]:")
        os.write(fd, b"2\n")  # WebSocket file
        at = read_until(b"Text: ", at)
        read_until(b"Choose [1]:", at, 30)
        os.write(fd, b"q\n")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert "1) REST upload" in text and "3) WebSocket real-time" in text
    spoken = re.search(r"Text: (.*)", text).group(1)
    assert wer(clip.text, spoken) <= 0.15, spoken


# --- --job: durable jobs through POST /v1/jobs -------------------------------------------------------------


def test_job_mode_shows_progress_and_prints_the_text(server, librivox):
    clip = librivox[1]
    r = run_client("--job", str(clip.path), "--language", "en", "--api-key", server.api_key,
                   "--poll-s", "0.2", *target(server))
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"Job (job_[0-9a-f]+) queued", r.stdout).group(1)
    # not a terminal: plain progress lines, the last one the job's end
    lines = [l for l in r.stderr.splitlines() if l.startswith(f"Job {job_id}: ")]
    assert lines and lines[-1].startswith(f"Job {job_id}: succeeded 100%"), r.stderr
    assert "\r" not in r.stderr and "\033[" not in r.stderr
    [spoken] = texts(r.stdout)
    assert wer(clip.text, spoken) <= 0.15, r.stdout


def test_job_mode_saves_the_result_file(server, librivox, tmp_path):
    clip = librivox[4]
    out = tmp_path / "talk.srt"
    r = run_client("--job", str(clip.path), "--output", str(out), "--api-key", server.api_key,
                   "--poll-s", "0.2", *target(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"srt result saved to {out}" in r.stdout  # the format follows the file's extension
    srt = out.read_text()
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", srt), srt
    spoken = " ".join(l for l in srt.splitlines() if l and not l.isdigit() and "-->" not in l)
    assert wer(clip.text, spoken) <= 0.15, srt


def test_job_mode_on_a_terminal_redraws_one_line(server, librivox):
    clip = librivox[1]
    pid, fd = pty.fork()
    if pid == 0:
        env = {k: v for k, v in os.environ.items() if k != "WHISPER_API_KEY"}
        os.execve(sys.executable, [sys.executable, str(SCRIPT), "--job", str(clip.path), "--api-key",
                                   server.api_key, "--poll-s", "0.2", *target(server)], env)
    output = b""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, output
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert "\r\033[KJob succeeded [" + "#" * 30 + "] 100%" in text, text
    assert not re.search(r"Job job_\w+: (queued|running)", text)  # no scrolling status lines
    assert wer(clip.text, re.search(r"Text: (.*)", text).group(1).strip()) <= 0.15, text


def test_ctrl_c_leaves_the_job_running_and_says_how_to_fetch_it(server, speech_with_pauses):
    import signal

    import httpx

    path, spoken = speech_with_pauses
    env = {k: v for k, v in os.environ.items() if k != "WHISPER_API_KEY"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--job", str(path), "--api-key", server.api_key,
                             "--poll-s", "0.2", *target(server)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline() + proc.stdout.readline()  # "-> POST ..." then "Job job_... queued"
        job_id = re.search(r"Job (job_[0-9a-f]+)", first).group(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"Job {job_id} keeps running on the server" in err, err
    assert f"/v1/jobs/{job_id}/result" in err and server.api_key not in err  # the hint names $WHISPER_API_KEY
    base = f"http://127.0.0.1:{server.port}/v1/jobs/{job_id}"
    deadline = time.monotonic() + 90
    while True:
        job = httpx.get(base, headers={"X-API-Key": server.api_key}, timeout=10).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    assert wer(spoken, job["result"]["text"]) <= 0.2, job


def test_job_mode_refusals_are_reported(server, librivox):
    r = run_client("--job", str(librivox[1].path), "--webhook-url", "http://127.0.0.1:9/hook",
                   "--api-key", server.api_key, *target(server))
    assert r.returncode == 1 and "Server error 400" in r.stderr and "non-public" in r.stderr, r.stderr
    r = run_client("--job", str(librivox[1].path), *target(server))
    assert r.returncode == 1 and "Server error 401" in r.stderr, r.stderr
    r = run_client(str(librivox[1].path), "--output", "x.srt", *target(server))
    assert r.returncode == 2 and "go with --job" in r.stderr
