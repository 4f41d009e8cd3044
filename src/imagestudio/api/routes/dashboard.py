"""The web dashboard: one static page (``/`` and ``<API prefix>/``) with its script and style
as package data (``api/static``, no build step, nothing from a CDN), and the providers' view
it shows (``<API prefix>/providers``).

The page holds no data of its own: it calls the same API as everyone, with the bearer token
the person types in (kept in the tab's sessionStorage), so a user sees only their own jobs.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from imagestudio.api.deps import StoreDep, UserDep
from imagestudio.api.schemas import ProviderOut, provider_out
from imagestudio.domain import API_PREFIX

router = APIRouter()
pages = APIRouter()

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "core.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
UI_PATH = f"{API_PREFIX}/ui"
# The page may load only its own script, style and images; it calls only this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: "
    "https:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> str:
    return (resources.files("imagestudio.api") / "static" / name).read_text(encoding="utf-8")


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
@pages.get(f"{API_PREFIX}/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    html = _read("index.html").replace("{{UI}}", UI_PATH).replace("{{API}}", API_PREFIX)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@pages.get(f"{UI_PATH}/{{name}}", include_in_schema=False)
async def asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise HTTPException(404, "no such asset")
    return Response(_read(name), media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/providers", response_model=dict[str, list[ProviderOut]])
async def providers(store: StoreDep, user: UserDep) -> dict[str, list[ProviderOut]]:
    """The governors of the provider keys the caller's jobs use: window, pace, cooldown, 429s
    and calls in flight, by key fingerprint (never the key)."""
    keys = await store.provider_keys(user)
    views = await store.governor_states(keys) if keys else []
    return {"providers": [provider_out(v) for v in views]}
