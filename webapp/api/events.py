"""Server-sent events for a denoising request: `step` events while it runs, then its answer.

`/diffuse` answers one binary body when the loop ends. A client that shows progress and offers
Stop (the browser client at /edge/) asks with `Accept: text/event-stream` instead and reads:

    event: step      data: {"step": 3, "of": 20}           after every denoising step
    event: result    data: {"body": "<base64 of the binary answer>"}   the same bytes as without events
    event: error     data: {"error": {"code": ..., "message": ...}, "status": 503}

Everything checked before the queue (bad input, a full queue) is still a plain HTTP error. A
client that goes away (Stop: the page aborts its fetch) ends the stream, and the job stops at
its next step, as a dropped plain request does.
"""

from __future__ import annotations

import asyncio
import base64
import json

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import describe

MEDIA_TYPE = "text/event-stream"
KEEPALIVE_S = 1.0  # a comment line while no step has come (the first step may compile)


def wanted(request: Request) -> bool:
    return MEDIA_TYPE in request.headers.get("accept", "")


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def respond(gate, work, answer) -> StreamingResponse:
    """Run work(job, callback) through the gate, streaming its steps; answer(result) -> bytes."""
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue = asyncio.Queue()

    def callback(step, of, latents):
        loop.call_soon_threadsafe(steps.put_nowait, {"step": int(step), "of": int(of)})

    task = asyncio.ensure_future(gate.run(lambda job: work(job, callback)))
    await asyncio.sleep(0)  # admission happens at once: a full queue is a plain 503, not a stream
    if task.done() and task.exception() is not None:
        raise task.exception()

    async def events():
        try:
            while not task.done():
                getter = asyncio.ensure_future(steps.get())
                done, _ = await asyncio.wait({getter, task}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield _event("step", getter.result())
                else:
                    getter.cancel()
                    if not done:
                        yield b": working\n\n"
            while not steps.empty():
                yield _event("step", steps.get_nowait())
            try:
                body = answer(task.result())
            except Exception as e:  # noqa: BLE001 - every failure is answered, as webapp.errors maps it
                status, code, message, _ = describe(e)
                yield _event("error", {"error": {"code": code, "message": message}, "status": status})
                return
            yield _event("result", {"body": base64.b64encode(body).decode()})
        finally:
            if not task.done():
                task.cancel()  # the client left: the gate marks the job cancelled, it stops at its next step

    return StreamingResponse(events(), media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store",
                                                                         "X-Accel-Buffering": "no"})
