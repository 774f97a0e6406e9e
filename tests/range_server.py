"""The HTTP side of a resumable download, for test servers: answer `Range: bytes=N-` with 206 and the rest of the file."""

from __future__ import annotations

import http.server


def send_range(handler: http.server.BaseHTTPRequestHandler, data: bytes) -> tuple[int, bytes]:
    """Send the status and headers for `data` (206 + Content-Range when a range was asked for); return (start, body)."""
    start = int(handler.headers["Range"].removeprefix("bytes=").rstrip("-")) if handler.headers.get("Range") else 0
    handler.send_response(206 if start else 200)
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    handler.send_header("Content-Length", str(len(data) - start))
    handler.end_headers()
    return start, data[start:]
