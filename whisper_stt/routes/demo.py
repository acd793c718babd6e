"""GET /demo: a browser page that streams the microphone to /ws/transcribe (files in ``whisper_stt/web/``).

The page itself needs no key: it asks the person for one and sends it as the WebSocket's first message
(browsers cannot set headers on a WebSocket) or as ``X-API-Key`` on REST uploads. Only the files listed
here are served; the page has no build step and loads nothing from other origins.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter(tags=["demo"])

# Inside the package, so an installed wheel serves the page too (package data, see pyproject.toml).
WEB_DIR = Path(__file__).resolve().parent.parent / "web"

_ASSETS = {
    "demo.js": "text/javascript; charset=utf-8",
    "audio-worklet.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}

# Everything comes from this origin; the socket goes to the same host (ws: or wss:).
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
    ),
    "Referrer-Policy": "no-referrer",
}


def _file(name: str, media_type: str) -> FileResponse:
    path = WEB_DIR / name
    if not path.is_file():
        raise HTTPException(404, f"The demo page's file {name} is missing from {WEB_DIR}.")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


@router.get("/demo", include_in_schema=False)
async def demo_page() -> FileResponse:
    return _file("demo.html", "text/html; charset=utf-8")


@router.get("/demo/", include_in_schema=False)
async def demo_slash() -> RedirectResponse:
    # The page refers to its files relative to /demo; keep one canonical address.
    return RedirectResponse("../demo", status_code=308)


@router.get("/demo/{name}", include_in_schema=False)
async def demo_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "Not found.")
    return _file(name, media_type)
