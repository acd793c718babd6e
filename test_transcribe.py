#!/usr/bin/env python3
"""test_transcribe.py - try a running Whisper STT server with an audio file.

Modes (``--mode``):
  rest     POST /transcribe (multipart upload, with a progress indicator)
  ws-file  WebSocket /ws/transcribe file transcription (transcribe_file ... transcribe_file_end)
  stream   WebSocket real-time: the file is decoded to 16 kHz mono and replayed as a live microphone at
           real-time pace (times --speed); partials are shown in place, finals as lines
  all      the three above, one after the other
  job      (or ``--job``) POST /v1/jobs: a durable job for long recordings; a progress bar until it ends,
           then the result printed or saved (``--output``, ``--response-format``). Ctrl-C leaves the job
           running on the server and prints how to fetch it later

Without ``--mode`` on a terminal an interactive menu asks what to do; otherwise (scripts, pipes) it runs
``rest`` and ``ws-file`` like the original client did.

Examples:
  python test_transcribe.py speech.mp3 --api-key sk-...
  python test_transcribe.py speech.wav --mode stream --language en --speed 2
  python test_transcribe.py speech.wav --tls --port 8766 --insecure --mode all
  WHISPER_API_KEY=sk-... python test_transcribe.py speech.wav --mode ws-file
  python test_transcribe.py --job meeting.mp3 --response-format srt --output meeting.srt

Exit status: 0 on success, 1 when the server refuses or fails (its message is printed), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import shutil
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

MODES = ("rest", "ws-file", "stream", "all", "job")
JOB_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SAMPLE_RATE = 16000
UPLOAD_CHUNK = 256 * 1024  # bytes per read while uploading (progress granularity)
WS_FILE_FRAME = 256 * 1024  # bytes per binary frame in ws-file mode


class ClientError(Exception):
    """A failure to report to the user (server error message, connection refused, ...)."""


# ------------------------------------------------------------------------------------------------
# output helpers
def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fmt_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds or 0.0))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours:d}:{minutes:02d}:{secs:05.2f}"
    return f"{minutes:02d}:{secs:05.2f}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class Progress:
    """Progress for uploads: a line rewritten in place on a terminal, a few plain lines otherwise."""

    def __init__(self, label: str, total: int, stream=None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.started = time.monotonic()
        self.next_mark = 25  # percent, for non-terminal output
        self.show_lines = total >= 1024 * 1024  # small files: no noise in logs
        self.finished: Optional[float] = None  # when the last byte went out

    def update(self, done: int) -> None:
        pct = min(100, int(done * 100 / self.total))
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        text = (f"{self.label}: {pct:3d}% ({human_bytes(done)} / {human_bytes(self.total)}, "
                f"{human_bytes(rate)}/s)")
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif self.show_lines and pct >= self.next_mark:
            self.stream.write(text + "\n")
            self.stream.flush()
            while self.next_mark <= pct:
                self.next_mark += 25

    def done(self, note: str = "") -> None:
        elapsed = (self.finished or time.monotonic()) - self.started
        text = f"{self.label}: {human_bytes(self.total)} sent in {elapsed:.1f} s{note}"
        if self.tty:
            self.stream.write("\r\033[K" + text + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def print_result(result: dict, title: str) -> None:
    """Print a transcription (REST response or file_result): summary, segments with times, text."""
    lang = result.get("language") or "?"
    prob = result.get("language_probability")
    lang_text = f"{lang} ({prob:.2f})" if isinstance(prob, (int, float)) else lang
    parts = [f"language {lang_text}", f"duration {float(result.get('duration') or 0):.2f} s"]
    if isinstance(result.get("processing_time"), (int, float)):
        parts.append(f"processing {result['processing_time']:.2f} s")
    print(f"== {title}: " + ", ".join(parts))
    for seg in result.get("segments") or []:
        conf = seg.get("confidence")
        conf_text = f"  ({conf:.2f})" if isinstance(conf, (int, float)) else ""
        print(f"  [{fmt_time(seg.get('start', 0))} -> {fmt_time(seg.get('end', 0))}] "
              f"{(seg.get('text') or '').strip()}{conf_text}")
    print(f"Text: {(result.get('text') or '').strip()}")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# connection settings
class Target:
    """Where the server is and how to reach it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.host = args.host
        self.tls = args.tls
        self.port = args.port or (8766 if args.tls else 8765)
        self.insecure = args.insecure
        self.cafile = args.cafile
        self.api_key = args.api_key
        self.timeout = args.timeout
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        self.http_base = f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        self.ws_url = f"{'wss' if self.tls else 'ws'}://{host}:{self.port}/ws/transcribe"

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.tls:
            return None
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.cafile) if self.cafile else ssl.create_default_context()

    def http_verify(self):
        ctx = self.ssl_context()
        return ctx if ctx is not None else True

    def headers(self) -> dict:
        return {"X-API-Key": self.api_key} if self.api_key else {}


def _server_message(response) -> str:
    """The server's error text from an HTTP error response."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error")
        if isinstance(detail, dict):
            detail = detail.get("message") or json.dumps(detail)
        if detail:
            return str(detail)
    return json.dumps(body)[:500]


def _connect_failure(url: str, exc: BaseException) -> ClientError:
    reason = str(exc) or type(exc).__name__
    lowered = reason.lower()
    if isinstance(exc, ConnectionRefusedError) or "refused" in lowered or "errno 111" in lowered:
        reason = "connection refused"
    hint = ""
    if isinstance(exc, ssl.SSLError) or "certificate" in reason.lower():
        hint = " (self-signed certificate? use --cafile cert.pem or --insecure)"
    elif "refused" in reason:
        hint = " - is the server running on that host and port?"
    return ClientError(f"Cannot connect to {url}: {reason}{hint}")


def server_requires_key(target: Target) -> Optional[bool]:
    """Ask GET / whether auth is on (None when unknown)."""
    import httpx

    try:
        r = httpx.get(target.http_base + "/", verify=target.http_verify(), timeout=10)
        return bool(r.json().get("auth_enabled")) if r.status_code == 200 else None
    except httpx.ConnectError as exc:
        raise _connect_failure(target.http_base, exc) from exc
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# REST
def _multipart(
    path: Path, language: Optional[str], boundary: str, progress: Progress,
    fields: Optional[dict] = None,
) -> tuple[Iterator[bytes], int]:
    """A streamed multipart/form-data body (so the upload can report progress) and its length."""
    size = path.stat().st_size
    name = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = b""
    for key, value in {"language": language, **(fields or {})}.items():
        if value:
            head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n"
                     f"{value}\r\n").encode("utf-8")
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n").encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(UPLOAD_CHUNK)
                if not chunk:
                    break
                sent += len(chunk)
                progress.update(sent)
                yield chunk
        yield tail
        progress.finished = time.monotonic()

    return body(), len(head) + size + len(tail)



def _post_upload(target, url: str, body, headers: dict) -> "httpx.Response":
    """POST a streamed multipart body; connection problems become one ClientError line."""
    import httpx

    try:
        timeout = httpx.Timeout(target.timeout, connect=10)
        with httpx.Client(verify=target.http_verify(), timeout=timeout) as client:
            return client.post(url, content=body, headers=headers)
    except httpx.ConnectError as exc:
        raise _connect_failure(url, exc) from exc
    except httpx.TimeoutException as exc:
        raise ClientError(f"No answer from {url} within {target.timeout:g} s") from exc
    except httpx.HTTPError as exc:
        # The server may answer (413, 401) and close before the whole body is sent.
        raise ClientError(f"Request to {url} failed: {exc}") from exc


def run_rest(target: Target, path: Path, language: Optional[str]) -> dict:
    size = path.stat().st_size
    boundary = "----whisper-stt-" + uuid.uuid4().hex
    progress = Progress("Uploading", size)
    body, length = _multipart(path, language, boundary, progress)
    headers = {
        **target.headers(),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(length),
    }
    url = target.http_base + "/transcribe"
    print(f"-> POST {url} ({path.name}, {human_bytes(size)}, language {language or 'auto'})")
    began = time.monotonic()
    response = _post_upload(target, url, body, headers)
    progress.done()
    if response.status_code != 200:
        raise ClientError(f"Server error {response.status_code}: {_server_message(response)}")
    try:
        result = response.json()
    except ValueError as exc:
        raise ClientError(f"The server's answer is not JSON: {response.text[:200]}") from exc
    print_result(result, f"REST result in {time.monotonic() - began:.2f} s")
    return result


# ------------------------------------------------------------------------------------------------
# durable jobs (POST /v1/jobs, then polling GET /v1/jobs/{id})
class JobProgress:
    """A job's state for people: one bar rewritten in place on a terminal; on a pipe, a line when the
    status changes and at every 10 %."""

    WIDTH = 30

    def __init__(self, job_id: str, stream=None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.started = time.monotonic()
        self.last_status: Optional[str] = None
        self.next_mark = 10  # percent, for non-terminal output

    def update(self, job: dict) -> None:
        status = str(job.get("status") or "?")
        pct = int(max(0.0, min(1.0, float(job.get("progress") or 0.0))) * 100)
        elapsed = time.monotonic() - self.started
        duration = job.get("duration")
        audio = f", {fmt_time(duration)} of audio" if isinstance(duration, (int, float)) else ""
        if self.tty:
            filled = pct * self.WIDTH // 100
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r\033[KJob {status:9s} [{bar}] {pct:3d}%  {fmt_time(elapsed)}{audio}")
            self.stream.flush()
            return
        if status != self.last_status or (status == "running" and pct >= self.next_mark):
            self.stream.write(f"Job {self.job_id}: {status} {pct}% after {elapsed:.1f} s{audio}\n")
            self.stream.flush()
            while self.next_mark <= pct:
                self.next_mark += 10
        self.last_status = status

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _job_fetch_hint(target: Target, job_id: str) -> str:
    key = ' -H "X-API-Key: $WHISPER_API_KEY"' if target.api_key else ""
    insecure = " -k" if target.tls and target.insecure else ""
    return (f"Job {job_id} keeps running on the server. Follow it or fetch its result later with:\n"
            f"  curl{insecure}{key} {target.http_base}/v1/jobs/{job_id}\n"
            f"  curl{insecure}{key} {target.http_base}/v1/jobs/{job_id}/result\n"
            f"Cancel it with: curl{insecure}{key} -X DELETE {target.http_base}/v1/jobs/{job_id}")


def submit_job(target: Target, path: Path, language: Optional[str], response_format: str,
               word_timestamps: bool = False, webhook_url: Optional[str] = None) -> dict:
    """Upload ``path`` to POST /v1/jobs; the queued job as the server answered (202)."""
    size = path.stat().st_size
    boundary = "----whisper-stt-" + uuid.uuid4().hex
    progress = Progress("Uploading", size)
    fields = {"response_format": response_format, "word_timestamps": "true" if word_timestamps else None,
              "webhook_url": webhook_url}
    body, length = _multipart(path, language, boundary, progress, fields)
    headers = {**target.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": str(length)}
    url = target.http_base + "/v1/jobs"
    print(f"-> POST {url} ({path.name}, {human_bytes(size)}, language {language or 'auto'}, "
          f"{response_format})", flush=True)
    response = _post_upload(target, url, body, headers)
    progress.done()
    if response.status_code != 202:
        raise ClientError(f"Server error {response.status_code}: {_server_message(response)}")
    try:
        job = response.json()
        job["id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"The server's answer is not a job: {response.text[:200]}") from exc
    return job


def wait_job(target: Target, job_id: str, poll_s: float = 1.0, wait_s: Optional[float] = None) -> dict:
    """Poll GET /v1/jobs/{id} until the job ends (or ``wait_s`` passes); the last job seen."""
    import httpx

    url = f"{target.http_base}/v1/jobs/{job_id}"
    bar = JobProgress(job_id)
    began = time.monotonic()
    failures = 0
    try:
        with httpx.Client(verify=target.http_verify(), timeout=httpx.Timeout(30, connect=10)) as client:
            while True:
                try:
                    response = client.get(url, headers=target.headers())
                except httpx.HTTPError as exc:
                    # the server may be restarting; the job is durable, so keep asking for a while
                    failures += 1
                    if failures >= 30:
                        raise _connect_failure(url, exc) from exc
                    time.sleep(poll_s)
                    continue
                failures = 0
                if response.status_code != 200:
                    raise ClientError(f"Server error {response.status_code}: {_server_message(response)}")
                job = response.json()
                bar.update(job)
                if job.get("status") in ("succeeded", "failed", "cancelled"):
                    return job
                if wait_s is not None and time.monotonic() - began > wait_s:
                    raise ClientError(f"Job {job_id} did not end within {wait_s:g} s (still "
                                      f"{job.get('status')}).\n" + _job_fetch_hint(target, job_id))
                time.sleep(poll_s)
    finally:
        bar.close()


def fetch_job_result(target: Target, job_id: str) -> bytes:
    """GET /v1/jobs/{id}/result: the result file itself (JSON, text, SRT or VTT)."""
    import httpx

    url = f"{target.http_base}/v1/jobs/{job_id}/result"
    try:
        response = httpx.get(url, headers=target.headers(), verify=target.http_verify(), timeout=60)
    except httpx.HTTPError as exc:
        raise _connect_failure(url, exc) from exc
    if response.status_code != 200:
        raise ClientError(f"Server error {response.status_code}: {_server_message(response)}")
    return response.content


def run_job(target: Target, path: Path, language: Optional[str], response_format: str = "json",
            output: Optional[Path] = None, word_timestamps: bool = False, webhook_url: Optional[str] = None,
            poll_s: float = 1.0, wait_s: Optional[float] = None) -> dict:
    began = time.monotonic()
    job = submit_job(target, path, language, response_format, word_timestamps, webhook_url)
    job_id = job["id"]
    try:  # the line below is in the try: a Ctrl-C right after it (the moment a user sees the id) gets the hint
        print(f"Job {job_id} {job.get('status', 'queued')}", flush=True)
        job = wait_job(target, job_id, poll_s, wait_s)
    except KeyboardInterrupt:
        print("\nInterrupted. " + _job_fetch_hint(target, job_id), file=sys.stderr, flush=True)
        raise
    took = time.monotonic() - began
    if job["status"] != "succeeded":
        why = job.get("error") or ("cancelled" if job["status"] == "cancelled" else "no reason given")
        raise ClientError(f"Job {job_id} {job['status']}: {why}")
    if output is not None:
        data = fetch_job_result(target, job_id)
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise ClientError(f"Cannot write {output}: {exc.strerror or exc}") from exc
        print(f"Job {job_id} succeeded in {took:.1f} s; {response_format} result saved to {output} "
              f"({human_bytes(len(data))})", flush=True)
        return job
    result = job.get("result")
    title = f"Job result in {took:.1f} s"
    if isinstance(result, dict):
        print_result({**result, "language": job.get("language") or result.get("language"),
                      "duration": result.get("duration") or job.get("duration")}, title)
    else:
        print(f"== {title} ({response_format}):")
        sys.stdout.write(str(result or ""))
        if not str(result or "").endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return job


# ------------------------------------------------------------------------------------------------
# WebSocket helpers
class WsSession:
    """One authenticated /ws/transcribe connection."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.ws = None

    async def __aenter__(self) -> "WsSession":
        import websockets

        target = self.target
        if not target.api_key and server_requires_key(target):
            raise ClientError("The server requires an API key: pass --api-key sk-... or set WHISPER_API_KEY.")
        try:
            self.ws = await websockets.connect(
                target.ws_url, ssl=target.ssl_context(), max_size=None, open_timeout=15,
                ping_interval=20, ping_timeout=60,
            )
        except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake) as exc:
            raise _connect_failure(target.ws_url, exc) from exc
        try:
            if target.api_key:
                await self.ws.send(json.dumps({"api_key": target.api_key}))
                reply = await self.recv(15)
                if reply.get("type") != "auth":
                    raise ClientError(f"Authentication failed: {reply.get('message') or reply}")
            connected = await self.recv(15)
            if connected.get("type") != "connected":
                raise ClientError(f"Unexpected first message: {connected}")
            print(f"Connected to {target.ws_url} (model {connected.get('model')}, "
                  f"device {connected.get('device')}, load {connected.get('server_load')})")
        except BaseException:
            await self.ws.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def recv(self, timeout: float) -> dict:
        """Next JSON message; a server ``error`` message becomes a ClientError with its text."""
        import websockets

        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError as exc:
            raise ClientError(f"No message from the server within {timeout:g} s") from exc
        except websockets.exceptions.ConnectionClosed as exc:
            rcvd = exc.rcvd
            detail = ""
            if rcvd is not None:
                detail = f" (code {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''})"
            raise ClientError(f"The server closed the connection{detail}") from exc
        if isinstance(raw, bytes):
            raise ClientError("Unexpected binary message from the server")
        message = json.loads(raw)
        if message.get("type") == "error":
            code = f" [{message['code']}]" if message.get("code") else ""
            raise ClientError(f"Server error{code}: {message.get('message')}")
        return message

    async def expect(self, kind: str, timeout: float) -> dict:
        """Skip messages until one of type ``kind`` (errors raise)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"No '{kind}' message from the server within {timeout:g} s")
            message = await self.recv(left)
            if message.get("type") == kind:
                return message


async def _ws_file(target: Target, path: Path, language: Optional[str]) -> dict:
    data = path.read_bytes()
    async with WsSession(target) as session:
        began = time.monotonic()
        await session.ws.send(json.dumps({"command": "transcribe_file", "language": language or ""}))
        await session.expect("status", 15)
        progress = Progress("Sending", len(data))
        for pos in range(0, len(data), WS_FILE_FRAME):
            await session.ws.send(data[pos:pos + WS_FILE_FRAME])
            progress.update(min(pos + WS_FILE_FRAME, len(data)))
        await session.ws.send(json.dumps({"command": "transcribe_file_end"}))
        progress.done()
        result = await session.expect("file_result", target.timeout)
        print_result(result, f"WebSocket file result in {time.monotonic() - began:.2f} s")
        return result


def run_ws_file(target: Target, path: Path, language: Optional[str]) -> dict:
    size = human_bytes(path.stat().st_size)
    print(f"-> WebSocket file transcription {target.ws_url} ({path.name}, {size}, "
          f"language {language or 'auto'})")
    return asyncio.run(_ws_file(target, path, language))


# ------------------------------------------------------------------------------------------------
# stream: replay the file as a live microphone
def load_audio(path: Path):
    """Decode any audio file into float32 mono 16 kHz samples."""
    import numpy as np

    try:  # this repository's decoder (PyAV); works from a checkout
        from whisper_stt.audio import decode_file

        return decode_file(str(path))
    except ImportError:
        pass
    try:
        from faster_whisper.audio import decode_audio

        return np.asarray(decode_audio(str(path), sampling_rate=SAMPLE_RATE), dtype=np.float32)
    except ImportError:
        pass
    import wave

    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ClientError("Without PyAV only 16-bit WAV files can be streamed.")
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    pcm = pcm.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        n = int(len(pcm) * SAMPLE_RATE / rate)
        pcm = np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)
    return pcm


def encode_chunk(samples, audio_format: str) -> bytes:
    import numpy as np

    if audio_format == "float32":
        return samples.astype("<f4").tobytes()
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class LiveView:
    """Partials rewritten in place on a terminal (plain lines otherwise), finals as lines."""

    def __init__(self, total_s: float) -> None:
        self.tty = is_tty()
        self.total_s = total_s
        self.position = 0.0
        self.partial = ""
        self.last_plain = None
        self.finals: list[dict] = []

    def _clear(self) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K")

    def _draw(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        prefix = f"[{self.position:5.1f}/{self.total_s:.1f} s] "
        text = self.partial
        room = max(10, width - len(prefix) - 1)
        if len(text) > room:
            text = "..." + text[-(room - 3):]
        sys.stdout.write("\r\033[K" + prefix + "\033[2m" + text + "\033[0m")
        sys.stdout.flush()

    def tick(self, position: float) -> None:
        self.position = position
        self._draw()

    def on_partial(self, message: dict) -> None:
        self.partial = (message.get("text") or "").strip()
        if self.tty:
            self._draw()
        elif self.partial and self.partial != self.last_plain:
            self.last_plain = self.partial
            print(f"  ... {self.partial}", flush=True)

    def on_final(self, message: dict) -> None:
        self.finals.append(message)
        self.partial = ""
        self.last_plain = None
        self._clear()
        text = (message.get("text") or "").strip()
        times = ""
        if "start" in message and "end" in message:
            times = f"[{fmt_time(message['start'])} -> {fmt_time(message['end'])}] "
        lang = f" ({message['language']})" if message.get("language") else ""
        print(f"FINAL {times}{text}{lang}", flush=True)
        self._draw()

    def close(self) -> None:
        self._clear()
        sys.stdout.flush()


async def _stream(target: Target, path: Path, language: Optional[str], audio_format: str, speed: float,
                  chunk_ms: int, silence_threshold: Optional[float]) -> list[dict]:
    audio = load_audio(path)
    total_s = len(audio) / SAMPLE_RATE
    if total_s == 0:
        raise ClientError(f"{path} contains no audio samples")
    print(f"-> WebSocket stream {target.ws_url} ({path.name}, {total_s:.1f} s of audio as {audio_format}, "
          f"speed x{speed:g}, language {language or 'auto'})")
    view = LiveView(total_s)
    async with WsSession(target) as session:
        start = {"command": "start", "language": language or "", "audio_format": audio_format}
        if silence_threshold is not None:
            start["silence_threshold"] = silence_threshold
        await session.ws.send(json.dumps(start))
        status = await session.expect("status", 15)
        print(f"Streaming started ({status.get('message')})", flush=True)
        stopped = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            try:
                while True:
                    message = await session.recv(3600)
                    kind = message.get("type")
                    if kind == "partial":
                        view.on_partial(message)
                    elif kind == "final":
                        view.on_final(message)
                    elif kind == "status" and message.get("state") == "stopped":
                        if not stopped.done():
                            stopped.set_result(message)
                        return
            except BaseException as exc:  # report errors (and a closed socket) to the sender
                if not stopped.done():
                    stopped.set_exception(exc if isinstance(exc, Exception) else ClientError(str(exc)))
                if not isinstance(exc, Exception):
                    raise

        reader_task = asyncio.create_task(reader())
        try:
            step = max(1, int(SAMPLE_RATE * chunk_ms / 1000))
            began = time.monotonic()
            for i, pos in enumerate(range(0, len(audio), step)):
                if stopped.done():  # the reader saw an error: stop sending
                    break
                await session.ws.send(encode_chunk(audio[pos:pos + step], audio_format))
                view.tick(min(pos + step, len(audio)) / SAMPLE_RATE)
                target_time = began + (i + 1) * (step / SAMPLE_RATE) / speed
                await asyncio.sleep(max(0.0, target_time - time.monotonic()))
            if not stopped.done():
                await session.ws.send(json.dumps({"command": "stop"}))
            try:
                await asyncio.wait_for(asyncio.shield(stopped), target.timeout)
            except asyncio.TimeoutError as exc:
                raise ClientError(f"No final answer within {target.timeout:g} s after stop") from exc
        finally:
            view.close()
            reader_task.cancel()
            try:
                await reader_task
            except (asyncio.CancelledError, Exception):
                pass
    text = " ".join((m.get("text") or "").strip() for m in view.finals).strip()
    print(f"== Stream result: {len(view.finals)} final(s) from {total_s:.1f} s of audio")
    for m in view.finals:
        for seg in m.get("segments") or []:
            print(f"  [{fmt_time(seg.get('start', 0))} -> {fmt_time(seg.get('end', 0))}] "
                  f"{(seg.get('text') or '').strip()}")
    print(f"Text: {text}", flush=True)
    return view.finals


def run_stream(target: Target, path: Path, language: Optional[str], audio_format: str = "pcm16",
               speed: float = 1.0, chunk_ms: int = 100,
               silence_threshold: Optional[float] = None) -> list[dict]:
    return asyncio.run(_stream(target, path, language, audio_format, speed, chunk_ms, silence_threshold))


# ------------------------------------------------------------------------------------------------
# running modes
def run_modes(modes: list[str], target: Target, path: Path, args: argparse.Namespace) -> int:
    failures = []
    for mode in modes:
        if len(modes) > 1:
            print(f"\n##### {mode} #####", flush=True)
        try:
            if mode == "rest":
                run_rest(target, path, args.language)
            elif mode == "ws-file":
                run_ws_file(target, path, args.language)
            elif mode == "job":
                run_job(target, path, args.language, args.response_format,
                        Path(args.output) if args.output else None, args.word_timestamps,
                        args.webhook_url, args.poll_s, args.timeout if args.timeout_given else None)
            elif mode == "stream":
                run_stream(target, path, args.language, args.format, args.speed, args.chunk_ms,
                           args.silence_threshold)
        except ClientError as exc:
            print(f"ERROR ({mode}): {exc}", file=sys.stderr, flush=True)
            failures.append(mode)
        except KeyboardInterrupt:
            print("\nInterrupted.", file=sys.stderr)
            return 130
    if len(modes) > 1:
        print(f"\n{len(modes) - len(failures)}/{len(modes)} mode(s) succeeded"
              + (f"; failed: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


def _ask(prompt: str, default: str = "") -> str:
    suffix = f" [{default}]" if default else ""
    try:
        answer = input(f"{prompt}{suffix}: ").strip()
    except EOFError:
        raise KeyboardInterrupt from None
    return answer or default


def interactive(args: argparse.Namespace) -> int:
    """The original's menu: pick a file and a mode, repeat until quit."""
    print("=" * 60)
    print(" Whisper STT test client")
    print("=" * 60)
    try:
        path = Path(args.file) if args.file else None
        while path is None or not path.is_file():
            if path is not None:
                print(f"File not found: {path}")
            path = Path(_ask("Audio file to transcribe"))
        target = Target(args)
        print(f"Server: {target.http_base}  (WebSocket {target.ws_url})")
        if not target.api_key and server_requires_key(target):
            target.api_key = args.api_key = getpass.getpass("API key (sk-...): ").strip() or None
        while True:
            print()
            print(f"File: {path}   language: {args.language or 'auto'}   "
                  f"stream: {args.format}, x{args.speed:g}")
            print("  1) REST upload          (POST /transcribe)")
            print("  2) WebSocket file       (transcribe_file)")
            print("  3) WebSocket real-time  (replay the file as a microphone)")
            print("  4) All of the above")
            print("  5) Change language")
            print("  6) Change stream options (audio format, speed)")
            print("  7) Change file")
            print("  q) Quit")
            choice = _ask("Choose", "1").lower()
            if choice in ("q", "quit", "exit", "0"):
                return 0
            if choice == "5":
                args.language = _ask("Language code (empty = auto-detect, e.g. ko, en, ja)", "") or None
                continue
            if choice == "6":
                fmt = _ask("Audio format (pcm16 / float32)", args.format).lower()
                args.format = fmt if fmt in ("pcm16", "float32") else args.format
                try:
                    args.speed = max(0.1, float(_ask("Speed (1 = real time)", f"{args.speed:g}")))
                except ValueError:
                    print("Not a number; speed unchanged.")
                continue
            if choice == "7":
                new = Path(_ask("Audio file", str(path)))
                if new.is_file():
                    path = new
                else:
                    print(f"File not found: {new}")
                continue
            modes = {"1": ["rest"], "2": ["ws-file"], "3": ["stream"],
                     "4": ["rest", "ws-file", "stream"]}.get(choice)
            if modes is None:
                print("Please choose 1-7 or q.")
                continue
            run_modes(modes, target, path, args)
    except KeyboardInterrupt:
        print("\nBye.")
        return 130
    except ClientError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Try a Whisper STT server with an audio file: REST upload, WebSocket file transcription "
        "and real-time streaming.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --mode on a terminal an interactive menu opens; otherwise rest and ws-file run.",
    )
    parser.add_argument("file", nargs="?", help="audio or video file (wav, mp3, m4a, ogg, flac, webm ...)")
    parser.add_argument("--language", "-l", default=None,
                        help="language code (ko, en, ...); default auto-detect")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="server port (default 8765, or 8766 with --tls)")
    parser.add_argument("--tls", action="store_true", help="use https:// and wss://")
    parser.add_argument("--insecure", action="store_true", help="with --tls: do not verify the certificate")
    parser.add_argument("--cafile", default=None, help="with --tls: trust this certificate (e.g. cert.pem)")
    parser.add_argument("--api-key", default=os.environ.get("WHISPER_API_KEY") or None,
                        help="API key (default: env WHISPER_API_KEY)")
    parser.add_argument("--mode", "-m", choices=MODES, default=None, help="what to try (see above)")
    parser.add_argument("--format", choices=("pcm16", "float32"), default="pcm16",
                        help="stream mode: audio sample format (default pcm16)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="stream mode: 1.0 = real time, 2.0 = twice as fast")
    parser.add_argument("--chunk-ms", type=int, default=100,
                        help="stream mode: audio per binary frame (default 100)")
    parser.add_argument("--silence-threshold", type=float, default=None,
                        help="stream mode: seconds of silence that end an utterance (server default 2.0)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a transcription result (default 600; with --job: "
                        "no limit, Ctrl-C leaves the job running)")
    job = parser.add_argument_group("durable jobs (--job or --mode job)")
    job.add_argument("--job", action="store_true",
                     help="submit FILE as a job to POST /v1/jobs and show its progress until it ends")
    job.add_argument("--output", "-o", default=None, metavar="PATH",
                     help="save the job's result here (GET /v1/jobs/{id}/result) instead of printing it")
    job.add_argument("--response-format", choices=JOB_FORMATS, default=None,
                     help="the job's result format (default: json; with --output, from its extension: "
                     ".srt, .vtt, .txt, .json)")
    job.add_argument("--word-timestamps", action="store_true", help="word times in verbose_json")
    job.add_argument("--webhook-url", default=None, help="URL the server POSTs the ended job to")
    job.add_argument("--poll-s", type=float, default=1.0, help="seconds between progress checks (default 1)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be positive")
    if args.chunk_ms <= 0:
        parser.error("--chunk-ms must be positive")
    if args.cafile and not Path(args.cafile).is_file():
        parser.error(f"--cafile {args.cafile}: no such file")
    args.timeout_given = args.timeout is not None
    if args.timeout is None:
        args.timeout = 600.0
    if args.job:
        if args.mode not in (None, "job"):
            parser.error("--job is its own mode; leave out --mode")
        args.mode = "job"
    if args.mode == "job":
        if args.poll_s <= 0:
            parser.error("--poll-s must be positive")
        if args.response_format is None:
            suffix = Path(args.output).suffix.lower() if args.output else ""
            args.response_format = {".srt": "srt", ".vtt": "vtt", ".txt": "text"}.get(suffix, "json")
    elif args.output or args.response_format or args.webhook_url or args.word_timestamps:
        parser.error("--output, --response-format, --webhook-url and --word-timestamps go with --job")
    if args.mode is None and is_tty(sys.stdin) and is_tty(sys.stdout):
        return interactive(args)
    if not args.file:
        parser.error("FILE is required (or run it on a terminal without --mode for the menu)")
    path = Path(args.file)
    if not path.is_file():
        print(f"ERROR: file not found: {path}", file=sys.stderr)
        return 2
    if path.stat().st_size == 0:
        print(f"ERROR: file is empty: {path}", file=sys.stderr)
        return 2
    modes = {"all": ["rest", "ws-file", "stream"], None: ["rest", "ws-file"]}.get(args.mode, [args.mode])
    return run_modes(modes, Target(args), path, args)


if __name__ == "__main__":
    sys.exit(main())
