"""``GET /web/``: the served run as a browser export (``generate/web_export.py``), when ``chargen serve
--offer-browser`` asks for it. The page at ``/web/`` then generates in the visitor's browser with the same
module and weights as an exported folder, and the served page links to it. Off by default: it hands the
weights to anyone who can reach the server (no API key guards them; a browser's module imports cannot send one).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .routes import _state
from .schema import ApiError

TYPES = {
    "index.html": "text/html; charset=utf-8",
    "chargen.js": "text/javascript; charset=utf-8",
    "model.json": "application/json",
    "model.safetensors": "application/octet-stream",
}


async def asset(request: Request) -> Response:
    """One file of the export: ``/web/`` is its page, ``/web/NAME`` the others."""
    files = _state(request).browser_files
    if files is None:
        raise ApiError(404, "this server does not offer generation in the browser; start it with --offer-browser")
    name = request.path_params.get("name", "index.html")
    if name not in files:
        raise ApiError(404, f"no file /web/{name}; the page is /web/")
    return Response(files[name], media_type=TYPES[name], headers={"Cache-Control": "no-cache"})


async def folder(request: Request) -> Response:
    """``GET /web``: the page is ``/web/`` (its files are fetched relative to it)."""
    if _state(request).browser_files is None:
        raise ApiError(404, "this server does not offer generation in the browser; start it with --offer-browser")
    return RedirectResponse("/web/", status_code=308)
