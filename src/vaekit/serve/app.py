"""``vaekit serve RUN_DIR``: the explorer page and its JSON API, on Starlette (served by uvicorn).

Routes: ``GET /`` the page; ``GET /static/{name}`` the page's own files (a fixed list: nothing else on disk
is served); ``GET /api/info``; ``POST /api/decode`` ``{"z": base64 float32, "label"?, "shape"?}`` →
``{"image": base64 float32, "shape": [C, H, W]}``; ``POST /api/encode`` ``{"index": i}`` or
``{"upload": base64 image file}`` → ``{"latent", "latent_shape", "image", "shape"}``. Every bad request
is answered 4xx with ``{"error": message}``; the server goes on serving.

Hostile requests: only the host names the server was started for are answered (a page elsewhere that
rebinds its DNS name to 127.0.0.1 gets 400, not the model's data); one decode may ask for at most
``MAX_DECODE_PIXELS`` output pixels (the 4xx says so); the model runs one request at a time and at most
``MAX_WAITING`` more wait for it — past that, 503. Handlers are module-level functions that read what
they share from ``request.app.state``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vaekit.errors import VaekitError
from vaekit.serve.explorer import Explorer, decode_floats, encode_floats

log = logging.getLogger("vaekit")

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
MAX_BODY = 1 << 20
"""Bytes a decode request may have (a kl-f8 latent of 64×64×4 floats is 87 KB in base64)."""
MAX_UPLOAD = 16 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_DECODE_PIXELS = 1024 * 1024
"""Output pixels one decode may produce: a KL-f8 latent of 128×128 (a 1024² image), about a second on a CPU."""
MAX_WAITING = 8
"""Requests that may wait for the model while it serves another; more are answered 503."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def fragment(payload: dict | None = None) -> str:
    """The explorer as an HTML fragment: its container and its data, then (``payload`` given: the page
    decodes and draws offline, as in report.html) the style and script inline. Without a payload the
    script fetches ``/api/info`` and decodes through the server."""
    config = {"payload": payload} if payload is not None else {}
    data = json.dumps(config).replace("</", "<\\/")  # "</" cannot end the script element early
    html = f'<div id="vaekit-explorer"></div>\n<script type="application/json" id="vaekit-explorer-config">{data}</script>\n'
    if payload is not None:
        html += (f"<style>{(STATIC / 'explorer.css').read_text()}</style>\n"
                 f"<script>{(STATIC / 'explorer.js').read_text()}</script>\n")
    return html


def page() -> str:
    """The served page: the fragment, with the style and script from ``/static``."""
    head = '<link rel="stylesheet" href="/static/explorer.css">\n<script src="/static/explorer.js" defer></script>'
    return (STATIC / "explorer.html").read_text().replace("<!--HEAD-->", head).replace("<!--EXPLORER-->", fragment())


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HTTPException(413, f"the request body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the request body is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return data


def floats(data: dict, key: str):
    value = data.get(key)
    if not isinstance(value, str):
        raise HTTPException(400, f"{key} must be a base64 string of little-endian float32 values")
    try:
        return decode_floats(value)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{key} is not base64 of float32 values") from None


def integer(data: dict, key: str, required: bool = True):
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise HTTPException(400, f"{key} must be an integer")
    return value


def latent_shape(data: dict, explorer: Explorer) -> list[int] | None:
    """The ``shape`` of a decode request, checked as a list of integers whose decode stays within the cap."""
    shape = data.get("shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise HTTPException(400, "shape must be a list of integers")
    if len(shape) == 3 and explorer.layout == "spatial" and min(shape[1:]) >= 1:
        f = explorer.model.downsampling_factor
        if shape[1] * shape[2] * f * f > MAX_DECODE_PIXELS:
            side = int((MAX_DECODE_PIXELS // (f * f)) ** 0.5)
            raise HTTPException(413, f"a latent of {shape[1]}×{shape[2]} decodes to {shape[1] * f}×{shape[2] * f} "
                                     f"pixels; this server decodes at most {MAX_DECODE_PIXELS:,} a request "
                                     f"({side}×{side} latents for this model)")
    return shape


async def run_model(request: Request, call, *args):
    """``call(*args)`` on a worker thread, one model call at a time; 503 when ``MAX_WAITING`` already wait.
    The lock is released when the call ends, even if the client went away before (the thread cannot be
    stopped, so no second call may start beside it)."""
    state = request.app.state
    if state.waiting >= MAX_WAITING:
        raise HTTPException(503, f"the model is busy ({state.waiting} requests wait for it): try again shortly")
    state.waiting += 1
    try:
        await state.lock.acquire()
    finally:
        state.waiting -= 1
    task = asyncio.ensure_future(asyncio.to_thread(call, *args))
    task.add_done_callback(lambda _: state.lock.release())
    return await asyncio.shield(task)


async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.html)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no such file: {name}")
    return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])


async def api_info(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.info)


async def api_decode(request: Request) -> JSONResponse:
    explorer = request.app.state.explorer
    data = await read_json(request, MAX_BODY)
    z = floats(data, "z")
    label = integer(data, "label", required=False)
    shape = latent_shape(data, explorer)
    image = await run_model(request, explorer.decode, z, label, shape)
    return JSONResponse({"image": encode_floats(image), "shape": list(image.shape)})


async def api_encode(request: Request) -> JSONResponse:
    explorer = request.app.state.explorer
    data = await read_json(request, MAX_UPLOAD * 4 // 3 + 1024)
    if "upload" in data:
        if not isinstance(data["upload"], str):
            raise HTTPException(400, "upload must be a base64 image file (or a data URL)")
        try:
            raw = base64.b64decode(data["upload"].split(",")[-1], validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "upload must be a base64 image file (or a data URL)") from None
        if len(raw) > MAX_UPLOAD:
            raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD} bytes")
        latent, image = await run_model(request, explorer.encode_upload, raw, MAX_UPLOAD_PIXELS)
    else:
        latent, image = await run_model(request, explorer.encode_index, integer(data, "index"))
    return JSONResponse({"latent": encode_floats(latent), "latent_shape": list(latent.shape),
                         "image": encode_floats(image), "shape": list(image.shape)})


async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


async def on_request_error(request: Request, exc: VaekitError) -> JSONResponse:
    """A request vaekit refuses (RequestError, or any VaekitError a model call raises on its input): 400."""
    return error(400, str(exc))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("serve: %s %s failed", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}")


ROUTES = [Route("/", index), Route("/static/{name}", static), Route("/api/info", api_info),
          Route("/api/decode", api_decode, methods=["POST"]), Route("/api/encode", api_encode, methods=["POST"])]


def allowed_hosts(host: str) -> list[str]:
    """The Host headers to answer: the address served and the loopback names; any host when the server
    listens on every interface (then the user chose to be reachable by whatever name)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, f"[{host}]" if ":" in host and not host.startswith("[") else host, *LOOPBACK_NAMES})


def create_app(run_dir: str | Path, device: str = "cpu", host: str = "127.0.0.1") -> Starlette:
    app = Starlette(routes=ROUTES,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))],
                    exception_handlers={HTTPException: on_http_error, VaekitError: on_request_error,
                                        Exception: on_unexpected})
    explorer = Explorer.from_run(run_dir, device)
    app.state.explorer, app.state.info, app.state.html = explorer, explorer.info(), page()
    app.state.lock = asyncio.Lock()  # one model call at a time: torch uses every core for one
    app.state.waiting = 0
    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    import uvicorn

    app = create_app(run_dir, device, host)
    print(f"vaekit explorer for {run_dir}: http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
