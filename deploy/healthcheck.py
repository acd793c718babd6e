"""Container HEALTHCHECK: exit 0 when the server's GET /health answers "healthy", else 1.

Reads the same WHISPER_* variables as the server, so it probes whichever port the configuration
serves: the plain port in ws/both mode, the TLS port in wss mode (the certificate is not checked,
since the probe talks to its own process over 127.0.0.1). Standard library only.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request


def health_url(env: dict) -> tuple[str, ssl.SSLContext | None]:
    mode = env.get("WHISPER_MODE", "both")
    if mode == "wss":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return f"https://127.0.0.1:{env.get('WHISPER_WSS_PORT', '8766')}/health", ctx
    return f"http://127.0.0.1:{env.get('WHISPER_WS_PORT', '8765')}/health", None


def main() -> int:
    url, ctx = health_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4, context=ctx) as response:
            body = json.load(response)
    except Exception as exc:  # refused, timeout, bad JSON: all mean "not healthy"
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if body.get("status") != "healthy":
        print(f"unhealthy: {url}: {body.get('status')!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
