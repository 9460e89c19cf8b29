"""/docs and /redoc that work offline: Swagger UI, ReDoc and the favicon served from an installed package.

FastAPI's defaults load them from public CDNs, so an air-gapped deployment showed a blank page. The
assets come from the `fastapi-offline` wheel (Swagger UI, ReDoc's standalone bundle, FastAPI's
favicon); only its files are used, the pages are FastAPI's own generators pointed at local URLs.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/static/docs"
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"  # the one URL ReDoc's bundle loads from outside
router = APIRouter(include_in_schema=False)


def _folder():
    return files("fastapi_offline") / "static"


def mount_assets(app: FastAPI) -> None:
    """Serve the package's Swagger UI, ReDoc and favicon files under /static/docs (after the routes below)."""
    app.mount(ASSETS, StaticFiles(directory=str(_folder())), name="docs-assets")


@cache
def _redoc_bundle() -> bytes:
    return (_folder() / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, f"{ASSETS}/favicon.png".encode())


@router.get(f"{ASSETS}/redoc.standalone.js")
async def redoc_js() -> Response:
    """ReDoc's bundle with its "API docs by Redocly" logo pointed at the local favicon (no CDN request)."""
    return Response(_redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def _local(request: Request, viewer: str) -> tuple[str, dict[str, str]]:
    """This server's asset folder, and the spec URL and page title a documentation page takes."""
    app, root = request.app, request.scope.get("root_path", "")
    return f"{root}{ASSETS}", {"openapi_url": f"{root}{app.openapi_url}", "title": f"{app.title} - {viewer}"}


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    """Swagger UI for this API, every asset from this server."""
    assets, page = _local(request, "Swagger UI")
    return get_swagger_ui_html(
        **page,
        oauth2_redirect_url=f"{request.scope.get('root_path', '')}/docs/oauth2-redirect",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
    )


@router.get("/docs/oauth2-redirect")
async def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for this API, every asset from this server (no web fonts)."""
    assets, page = _local(request, "ReDoc")
    return get_redoc_html(
        **page, redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )  # fmt: skip


@router.get("/favicon.ico")
async def favicon(request: Request) -> RedirectResponse:
    """Browsers ask for /favicon.ico on every page: point them at the local one."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}{ASSETS}/favicon.png", status_code=308)
