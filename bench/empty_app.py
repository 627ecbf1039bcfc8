"""The ASGI floor: a trivial Starlette app at the same FHIR paths, answering fixed JSON.

Served by uvicorn with the same settings as `ehr serve`, it shows what the HTTP stack
alone costs (it still reads request bodies, as the server must).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_BODY = b'{"resourceType":"Patient","id":"floor","meta":{"versionId":"1"}}'


async def endpoint(request: Request) -> Response:
    await request.body()
    return Response(_BODY, media_type="application/fhir+json")


app = Starlette(routes=[Route("/fhir/{path:path}", endpoint, methods=["GET", "POST", "PUT"])])
