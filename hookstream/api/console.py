"""The web console: ``hookstream/api/static/index.html`` at ``/`` and the directory at ``/static/``.

The files are read at request time, so the console can be (re)built without restarting, and a
missing directory is not an error: ``/`` then answers a short note. The console calls the API with
the key its user pastes in; these routes themselves need no key (they serve no data).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from hookstream import resources
from hookstream.api.errors import not_found

STATIC_DIR = resources.static_dir()

# Applied to the console's pages and files; none of them is meant to be framed or sniffed.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
_MISSING_NOTE = (
    "<!doctype html><meta charset=utf-8><title>hookstream</title>"
    "<p>hookstream is running. The web console is not installed (hookstream/api/static/ is missing).</p>"
    '<p>API reference: <a href="/openapi.json">/openapi.json</a></p>'
)


def resolve_static(static_dir: Path, relative: str) -> Path | None:
    """The file under ``static_dir`` named by ``relative``, or None (missing, a directory, or outside it)."""
    if not relative or "\x00" in relative:
        return None
    root = static_dir.resolve()
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return web.Response(text=_MISSING_NOTE, content_type="text/html",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
    return web.FileResponse(page, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    path = resolve_static(STATIC_DIR, request.match_info["path"])
    if path is None:
        raise not_found("file")
    return web.FileResponse(path, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static_file)
