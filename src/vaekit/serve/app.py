"""``vaekit serve RUN_DIR``: the explorer page and its JSON API, on Starlette (served by uvicorn).

Routes: ``GET /`` the page; ``GET /static/{name}`` the page's own files (a fixed list: nothing else on disk
is served); ``GET /api/info``; ``POST /api/decode`` ``{"z": base64 float32, "label"?, "shape"?}`` →
``{"image": base64 float32, "shape": [C, H, W]}``; ``POST /api/encode`` ``{"index": i}`` or
``{"upload": base64 image file}`` → ``{"latent", "latent_shape", "image", "shape"}``. Every bad request
is answered 4xx with ``{"error": message}``; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from pathlib import Path

from vaekit.serve.explorer import Explorer, RequestError, decode_floats, encode_floats

log = logging.getLogger("vaekit")

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
MAX_BODY = 1 << 20
"""Bytes a decode request may have (a kl-f8 latent of 64×64×4 floats is 87 KB in base64)."""
MAX_UPLOAD = 16 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096


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


def create_app(run_dir: str | Path, device: str = "cpu"):
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    explorer = Explorer.from_run(run_dir, device)
    info = explorer.info()
    html = page()
    lock = asyncio.Lock()  # one model call at a time: torch uses every core for one

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
        except (json.JSONDecodeError, UnicodeDecodeError):
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

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(html)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no such file: {name}")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    async def api_info(request: Request) -> JSONResponse:
        return JSONResponse(info)

    async def api_decode(request: Request) -> JSONResponse:
        data = await read_json(request, MAX_BODY)
        z = floats(data, "z")
        label = integer(data, "label", required=False)
        shape = data.get("shape")
        if shape is not None and not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                                                        for s in shape)):
            raise HTTPException(400, "shape must be a list of integers")
        async with lock:
            image = await asyncio.to_thread(explorer.decode, z, label, shape)
        return JSONResponse({"image": encode_floats(image), "shape": list(image.shape)})

    async def api_encode(request: Request) -> JSONResponse:
        data = await read_json(request, MAX_UPLOAD * 4 // 3 + 1024)
        if "upload" in data:
            try:
                raw = base64.b64decode(str(data["upload"]).split(",")[-1], validate=True)
            except (binascii.Error, ValueError):
                raise HTTPException(400, "upload must be a base64 image file (or a data URL)") from None
            if len(raw) > MAX_UPLOAD:
                raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD} bytes")
            call = (explorer.encode_upload, raw, MAX_UPLOAD_PIXELS)
        else:
            call = (explorer.encode_index, integer(data, "index"))
        async with lock:
            latent, image = await asyncio.to_thread(*call)
        return JSONResponse({"latent": encode_floats(latent), "latent_shape": list(latent.shape),
                             "image": encode_floats(image), "shape": list(image.shape)})

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(400, str(exc))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/info", api_info),
              Route("/api/decode", api_decode, methods=["POST"]), Route("/api/encode", api_encode, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: on_http_error, RequestError: on_request_error,
                                                        Exception: on_unexpected})


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    import uvicorn

    app = create_app(run_dir, device)
    print(f"vaekit explorer for {run_dir}: http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
