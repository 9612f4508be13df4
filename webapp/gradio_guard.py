"""Around the mounted Gradio app: no 5xx and no dropped event stream for a bad request, and no
fetching of URLs for clients.

Gradio 6.31 raises on some bad requests instead of answering them: an unknown API name in
/gradio_api/call/<name> (FnIndexInferError), an fn_index that no event has in
/gradio_api/queue/join (KeyError), an upload whose "files" part has no file name (TypeError);
its error middleware then sends a 500. An event stream for an unknown session or event id
(/gradio_api/queue/data, GET /gradio_api/call/<name>/<id>) raises after its 200 went out,
and the connection is dropped mid-stream. Here the first get a 4xx with the error envelope,
the second end with an error event; the traceback goes to the log.

/gradio_api/file=<http(s) URL> makes Gradio fetch any public URL and stream it back: an open
proxy for anonymous clients that this app never needs (its files are in Gradio's cache), so
such a URL gets 403.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse

from .errors import error_response

log = logging.getLogger("webapp")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def _brief(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 160 else text[:160] + "..."


class GradioGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("/gradio_api/file=") and URL.match(urllib.parse.unquote(path[len("/gradio_api/file="):])):
            response = error_response(403, "url_not_served", "this server serves files from its own cache only, "
                                      "not URLs")
            return await response(scope, receive, send)
        held, started, stream, ended = [], False, False, False

        async def guarded(message):
            nonlocal started, stream, ended
            if message["type"] == "http.response.start" and message["status"] >= 500 or held:
                held.append(message)  # Gradio's 500 for an exception it re-raises: kept back until we know
                return
            if message["type"] == "http.response.start":
                started = True
                stream = b"text/event-stream" in dict(message.get("headers") or []).get(b"content-type", b"")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception as e:
            if started and (ended or not stream):
                raise
            log.warning("Gradio failed on %s %s", scope.get("method"), path, exc_info=True)
            if not started:
                missing = type(e).__name__ in ("FnIndexInferError", "KeyError")
                status, code = (404, "not_found") if missing else (400, "bad_request")
                what = "no such Gradio endpoint or event" if missing else "Gradio could not handle this request"
                response = error_response(status, code, f"{what} ({_brief(e)})")
                return await response(scope, receive, send)
            message = "this event stream ended: no such session or event (it finished, or never existed)"
            if "/call/" in path:
                body = f"event: error\ndata: {json.dumps(message)}\n\n"
            else:
                body = f"data: {json.dumps({'msg': 'unexpected_error', 'message': message, 'success': False})}\n\n"
            return await send({"type": "http.response.body", "body": body.encode(), "more_body": False})
        for message in held:  # a 5xx Gradio answered without raising
            await send(message)
