"""Job webhooks: where a job's end is announced, how the POST is signed, and how it is retried.

When a job ends the server POSTs ``{"type": "job.succeeded" | "job.failed" | "job.cancelled", "job": {...}}``
(the job as ``GET /v1/jobs/{id}`` shows it) to the job's ``webhook_url``, with these headers:

* ``X-Whisper-Timestamp``: unix seconds when this attempt was signed;
* ``X-Whisper-Signature``: ``v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``;
* ``X-Whisper-Delivery``: the same for every attempt (and every replay) of one job's end, so a receiver can
  drop duplicates; ``X-Whisper-Attempt``: 1, 2, ...

:func:`sign` and :func:`verify` are the one definition of the signature, shared by the server, the tests
and users' receivers.

A key holder chooses the URL, so the server must not become a probe of its own network: :func:`check_url`
refuses URLs whose host resolves to a private, loopback, link-local, multicast, reserved or unspecified
address (also when hidden in an IPv4-mapped, 6to4, NAT64 or Teredo IPv6 address) unless the operator allows
them (``--webhook-allow-private``). Delivery resolves the host again, checks those addresses again (the name
may have been re-pointed since submission: DNS rebinding), connects to the checked address itself, and never
follows redirects.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

import httpx

from .base import WEBHOOK_DELIVERED, WEBHOOK_GAVE_UP, WEBHOOK_PENDING, Job, JobStatus, WebhookAttempt

log = logging.getLogger("whisper_stt.jobs.webhook")

MAX_URL_LENGTH = 2048
SECRET_FILE = "webhook_secret"
TIMESTAMP_HEADER = "X-Whisper-Timestamp"
SIGNATURE_HEADER = "X-Whisper-Signature"
DELIVERY_HEADER = "X-Whisper-Delivery"
ATTEMPT_HEADER = "X-Whisper-Attempt"
MAX_BACKOFF_S = 300.0  # one wait between attempts never exceeds this, whatever the base and attempt count

# Special-purpose IPv6 prefixes that carry an IPv4 address in their low 32 bits (RFC 6052 NAT64, and its
# local-use form of RFC 8215): a gateway would turn them into the embedded IPv4 destination.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_EVENT = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


class WebhookRefused(ValueError):
    """The webhook URL may not be used; the message says why (shown to the client with a 400)."""


# --- signing --------------------------------------------------------------------------------------------


def _as_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: Union[str, bytes], timestamp: Union[int, str], body: Union[str, bytes]) -> str:
    """The ``X-Whisper-Signature`` value: ``v1=`` + hex HMAC-SHA256 of ``f"{timestamp}.{body}"``."""
    message = _as_bytes(str(timestamp)) + b"." + _as_bytes(body)
    return "v1=" + hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def verify(secret: Union[str, bytes], headers: Mapping[str, str], body: Union[str, bytes],
           tolerance_s: float = 300, now: Optional[float] = None) -> bool:
    """True when ``headers`` carry a valid signature of ``body`` (the raw bytes received) made less than
    ``tolerance_s`` ago. Header names are matched case-insensitively; the signature header may list several
    comma-separated values (one per secret while secrets rotate)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit() or not given:
        return False
    # An old signature replayed later is refused even though it is genuine.
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in given.split(","))


# --- the secret -----------------------------------------------------------------------------------------


def _jobs_dir(settings: Any) -> Path:
    return Path(getattr(settings, "jobs_dir", None) or "./jobs")


def secret_path(settings: Any) -> Path:
    """Where the generated secret is kept when ``webhook_secret`` is not set."""
    return _jobs_dir(settings) / SECRET_FILE


def webhook_secret(settings: Any) -> str:
    """The signing secret: ``settings.webhook_secret`` when given, else the content of ``<jobs_dir>/
    webhook_secret``, created (mode 0600) on first use. Keeping it in the jobs directory gives restarts and
    every worker sharing that directory the same secret. Blocking (file I/O): call it from a thread."""
    given = getattr(settings, "webhook_secret", None)
    if given is not None:
        value = given.get_secret_value() if hasattr(given, "get_secret_value") else str(given)
        if value:
            return value
    path = secret_path(settings)
    for _ in range(50):
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = None
        if value:
            return value
        if value is None and _create_secret_file(path):
            continue  # read back what won: ours, or another process's written first
        time.sleep(0.05)  # another process made the file and is about to fill it
    raise RuntimeError(f"webhook secret file {path} stays empty; delete it or set --webhook-secret")


def ensure_webhook_secret(settings: Any) -> str:
    """Make sure the signing secret exists (generating the file if needed) and say where it comes from, for
    a start-up log line; never the value. Blocking (file I/O)."""
    webhook_secret(settings)
    given = getattr(settings, "webhook_secret", None)
    if given is not None and (given.get_secret_value() if hasattr(given, "get_secret_value") else str(given)):
        return "webhook secret: from --webhook-secret / WHISPER_WEBHOOK_SECRET"
    path = secret_path(settings).resolve()
    return f"webhook secret: in {path} (mode 0600; give its content to webhook receivers)"


def _create_secret_file(path: Path) -> bool:
    """Write a new secret to ``path`` unless it exists. The file appears complete or not at all (written
    under a temporary name, then hard-linked), so two processes starting together never read half a
    secret or overwrite each other's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return True
        except OSError:
            # a volume without hard links: exclusive create is still atomic about who wins
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return True
            with os.fdopen(fd2, "w", encoding="utf-8") as fh:
                fh.write(tmp.read_text(encoding="utf-8"))
        log.debug("webhook secret generated in %s (mode 0600); receivers verify signatures with its content",
                 path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


# --- which addresses may be called ----------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client behind the relay is where the packet ends up
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refused(address: str) -> Optional[str]:
    """Why ``address`` (an IP literal) may not be called, or None when it is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = address_refused(str(inner))
            if why:
                return f"{address} embeds {why}"
    for attr in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_reserved",
                 "is_site_local", "is_private"):
        if getattr(ip, attr, False):
            return f"{ip} is {attr[3:].replace('_', '-')}"
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation and benchmark ranges
        return f"{ip} is not a public address"
    return None


def _parse(url: str):
    if not isinstance(url, str) or not url.strip():
        raise WebhookRefused("webhook_url is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise WebhookRefused("webhook_url contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook_url is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookRefused("webhook_url must be an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise WebhookRefused("webhook_url has no host")
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return url, parts, host, port


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve")
    return addresses


def _check_name(host: str) -> None:
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always this machine
        raise WebhookRefused(
            f"webhook_url host {host!r} is this machine; private addresses are not allowed unless the "
            "operator allows them with --webhook-allow-private"
        )


def _check_addresses(host: str, addresses: list[str]) -> None:
    for address in addresses:
        why = address_refused(address)
        if why:
            raise WebhookRefused(
                f"webhook_url host {host!r} resolves to a non-public address ({why}); "
                "the operator may allow it with --webhook-allow-private"
            )


def check_url(url: str, allow_private: bool) -> str:
    """The URL to store for a job, or :class:`WebhookRefused` saying why it may not be used.

    Only http(s) with a host, at most MAX_URL_LENGTH characters; unless ``allow_private``, every address the
    host resolves to must be public. Blocking (DNS): call it from a thread in async code."""
    url, _, host, port = _parse(url)
    if not allow_private:
        _check_name(host)
        _check_addresses(host, _resolve(host, port))
    return url


# --- delivery -------------------------------------------------------------------------------------------


def _pinned_request(url: str, allow_private: bool) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """Resolve and check the host now, then aim the request at the checked addresses themselves, so a name
    re-pointed between check and connect (DNS rebinding) cannot redirect it. Returns the URL with each
    address as host (in the resolver's order of preference), the Host header, and httpx extensions (TLS
    still verifies the original name)."""
    _, parts, host, port = _parse(url)
    if not allow_private:
        _check_name(host)
    addresses = _resolve(host, port)
    if not allow_private:
        _check_addresses(host, addresses)
    base = httpx.URL(url)
    targets = [str(base.copy_with(host=address.split("%", 1)[0])) for address in addresses]
    netloc = parts.netloc.rsplit("@", 1)[-1]  # the Host header never carries credentials
    extensions: dict[str, Any] = {}
    if parts.scheme.lower() == "https":
        extensions["sni_hostname"] = host
    return targets, {"Host": netloc}, extensions


def event_type(job: Job) -> str:
    return _EVENT.get(JobStatus(job.status), "job." + JobStatus(job.status).value)


def payload(job: Job) -> bytes:
    """The body POSTed for ``job``: compact JSON, the exact bytes that are signed."""
    from dataclasses import replace

    from .render import public_job  # the API's view of a job lives with the routes' rendering

    # The job as it ended, without the delivery's own bookkeeping: every attempt, also one made after a
    # restart, sends the same bytes.
    ended = replace(job, webhook_attempts=[], webhook_state=None, webhook_worker=None, webhook_due_at=None)
    data = {"type": event_type(job), "job": public_job(ended)}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def backoff_delay(attempt: int, base_s: float, rng: Optional[random.Random] = None) -> float:
    """Wait after failed attempt number ``attempt`` (1-based): base * 2^(attempt-1), times a random factor
    in [0.5, 1.5) so receivers coming back after an outage are not hit by every server at the same moment."""
    rng = rng or random
    return min(MAX_BACKOFF_S, base_s * (2 ** (attempt - 1))) * (0.5 + rng.random())


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return min(float(value), MAX_BACKOFF_S)
    return None


def _host_for_log(url: str) -> str:
    # the path or query may hold a receiver's token; the host is enough to tell which receiver failed
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


async def _attempt(transport: httpx.AsyncBaseTransport, url: str, body: bytes, secret: str, delivery: str,
                   number: int, allow_private: bool, timeout_s: float
                   ) -> tuple[Optional[int], Optional[str], bool, Optional[float]]:
    """One POST. Returns (status, error, retry?, retry_after_s)."""
    try:
        # a resolver that hangs must not hold the delivery longer than a receiver may
        targets, host_header, extensions = await asyncio.wait_for(
            asyncio.to_thread(_pinned_request, url, allow_private), timeout_s)
    except asyncio.TimeoutError:
        return None, "resolving the host timed out", True, None
    except WebhookRefused as exc:
        refused = str(exc)
        # a name that does not resolve may come back; one that resolves somewhere forbidden is final
        return None, refused, "does not resolve" in refused, None
    timestamp = str(int(time.time()))
    headers = {
        **host_header,
        "Content-Type": "application/json",
        "User-Agent": "whisper-stt-webhook/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        DELIVERY_HEADER: delivery,
        ATTEMPT_HEADER: str(number),
    }
    extensions["timeout"] = httpx.Timeout(timeout_s).as_dict()
    error = "no address"
    for target in targets:
        request = httpx.Request("POST", target, content=body, headers=headers, extensions=dict(extensions))
        try:
            # The transport, not a client: no redirects, no proxy from the environment (either would send
            # the request past the address check), and no client log line carrying the URL (it may hold a
            # token). The total is bounded too: the timeout above is per read, and a receiver could drip.
            response = await asyncio.wait_for(transport.handle_async_request(request), timeout_s)
            await response.aclose()  # the answer's body is not needed, and may be large
            break
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return None, "timed out", True, None
        except httpx.ConnectError as exc:
            # e.g. an IPv6 address without a route: the host's next checked address may answer
            error = (f"{type(exc).__name__}: {exc}")[:200]
        except httpx.HTTPError as exc:
            return None, (f"{type(exc).__name__}: {exc}")[:200], True, None
    else:
        return None, error, True, None
    status = response.status_code
    if 200 <= status < 300:
        return status, None, False, None
    if 300 <= status < 400:
        return status, f"HTTP {status}: redirects are not followed", False, None
    if status == 429 or status >= 500:
        return status, f"HTTP {status}", True, _retry_after(response)
    return status, f"HTTP {status}", False, None


def delivery_id(job: Job) -> str:
    """``X-Whisper-Delivery``: the same for every attempt of one job's end, in any process, after any
    restart."""
    return f"{job.id}.{event_type(job)}"


def delivery_lease_s(settings: Any) -> float:
    """How long a claimed delivery is held for one attempt: the resolver's and a POST's timeouts (a host may
    have two addresses to try) with room to spare, so a live holder is never overtaken mid-attempt."""
    return 3 * float(getattr(settings, "webhook_timeout_s", 10.0)) + 5.0


async def deliver_job_webhook(store: Any, job: Job, settings: Any,
                              worker: Optional[str] = None) -> Optional[str]:
    """POST the ended ``job`` to its webhook URL; retried with exponential backoff and jitter on connection
    errors, timeouts, 429 and 5xx, up to ``settings.webhook_max_attempts`` attempts in all (counting those
    recorded before a restart). Never raises for the receiver's faults.

    With ``worker`` and a store that keeps delivery state (``claim_webhook``), delivery is durable: the
    pending delivery is claimed first (None returned, nothing sent, when another process holds it or it is
    no longer owed), each attempt is recorded with the next try's time, and the final outcome
    (``delivered`` / ``gave_up``) is written; a process that dies meanwhile leaves it pending for the next
    sweep. Without them (a bare store), attempts are only recorded with ``store.add_webhook_attempt``.
    Returns the outcome (a WEBHOOK_* state), or None when this call did not finish the delivery."""
    durable = worker is not None and hasattr(store, "claim_webhook")
    lease_s = delivery_lease_s(settings)
    if durable:
        claimed = await store.claim_webhook(job.id, worker, lease_s)
        if claimed is None:
            return None
        job = claimed
    url = job.webhook_url
    if not url:
        return None
    max_attempts = max(1, int(getattr(settings, "webhook_max_attempts", 5)))
    timeout_s = float(getattr(settings, "webhook_timeout_s", 10.0))
    base_s = float(getattr(settings, "webhook_backoff_s", 2.0))
    allow_private = bool(getattr(settings, "webhook_allow_private", False))
    secret = await asyncio.to_thread(webhook_secret, settings)
    body = payload(job)
    delivery = delivery_id(job)
    host = _host_for_log(url)
    number = len(job.webhook_attempts) if durable else 0  # attempts made before a crash count too
    async with httpx.AsyncHTTPTransport(retries=0) as transport:
        while True:
            number += 1
            if number > max_attempts:  # e.g. the limit was lowered since the earlier attempts
                if durable:
                    await store.webhook_attempted(job.id, worker, None, WEBHOOK_GAVE_UP)
                log.warning("job %s: webhook to %s given up after %d attempt(s)", job.id, host, number - 1)
                return WEBHOOK_GAVE_UP
            at = time.time()
            status, error, retry, retry_after = await _attempt(
                transport, url, body, secret, delivery, number, allow_private, timeout_s
            )
            attempt = WebhookAttempt(at=at, status=status, error=error)
            if error is None:
                state, delay = WEBHOOK_DELIVERED, 0.0
            elif not retry or number == max_attempts:
                state, delay = WEBHOOK_GAVE_UP, 0.0
            else:
                state = WEBHOOK_PENDING
                delay = backoff_delay(number, base_s)
                if retry_after is not None:
                    delay = max(delay, retry_after)
            held = True
            try:
                if durable:
                    due = time.time() + delay if state == WEBHOOK_PENDING else None
                    held = await store.webhook_attempted(job.id, worker, attempt, state, due)
                else:
                    await store.add_webhook_attempt(job.id, attempt)
            except Exception:  # noqa: BLE001 - a store hiccup must not stop the delivery itself
                log.warning("job %s: could not record webhook attempt %d", job.id, number, exc_info=True)
                if durable:
                    # Unrecorded, the delivery stays pending under our lease; it is sent again (same
                    # delivery id) after the lease unless we get to record it ourselves.
                    return None
            if state == WEBHOOK_DELIVERED:
                log.info("job %s: webhook delivered to %s (HTTP %s, attempt %d)",
                         job.id, host, status, number)
                return state
            if state == WEBHOOK_GAVE_UP:
                log.warning("job %s: webhook to %s failed for good after %d attempt(s): %s",
                            job.id, host, number, error)
                return state
            if not held:
                log.info("job %s: webhook delivery taken over by another process", job.id)
                return None
            log.info("job %s: webhook to %s failed (%s); attempt %d in %.1f s",
                     job.id, host, error, number + 1, delay)
            await asyncio.sleep(delay)
            if durable:
                # Ours again unless another process took it once it fell due (then it sends the rest).
                claimed = await store.claim_webhook(job.id, worker, lease_s)
                if claimed is None:
                    return None
                number = len(claimed.webhook_attempts)
