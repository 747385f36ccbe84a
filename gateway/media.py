"""`GET /media/{key}`: the media store's files, served so that a browser never runs them."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from gateway.errors import json_error
from gateway.keys import MEDIA

# Shown in the page (images, audio, video, PDF); anything else is a download. SVG and HTML are
# downloads too: a browser would run the scripts they can carry.
_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp", "audio/", "video/", "application/pdf")


async def serve_media(request: web.Request) -> web.StreamResponse:
    key = f"{request.match_info['tenant_id']}/{request.match_info['token']}"
    store = request.app[MEDIA]
    try:
        meta = await store.describe(key)
        data = await store.read(key)
    except FileNotFoundError:
        return json_error(404, "not_found", "no such file")
    content_type = meta.get("content_type") or "application/octet-stream"
    inline = content_type.startswith(_INLINE)
    filename = meta.get("filename") or "attachment"
    headers = {
        "Content-Type": content_type if inline else "application/octet-stream",
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename*=UTF-8''{quote(filename)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=86400, immutable",
    }
    return web.Response(body=data, headers=headers)


def setup_media(app: web.Application) -> None:
    app.router.add_get("/media/{tenant_id:[0-9]+}/{token}", serve_media)
