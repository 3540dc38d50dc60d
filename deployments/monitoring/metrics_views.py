"""Prometheus' endpoints: the console's /metrics, the service-discovery lists, the deployments' server metrics
through the console. No login: when METRICS_BEARER_TOKEN is set each asks for `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from deployments.monitoring import discovery, metrics

SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)
CHUNK = 64 * 1024


def refusal(request: HttpRequest) -> HttpResponse | None:
    """401 unless the request carries the metrics bearer token (when one is set); compared in constant time."""
    expected = settings.METRICS_BEARER_TOKEN
    if not expected:
        return None
    given = request.headers.get("Authorization", "")
    scheme, _sep, token = given.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return None
    response = HttpResponse(_("A metrics bearer token is required.") + "\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@require_GET
def console_metrics(request: HttpRequest) -> HttpResponse:
    if (refused := refusal(request)) is not None:
        return refused
    return HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


@require_GET
def targets(request: HttpRequest) -> HttpResponse:
    if (refused := refusal(request)) is not None:
        return refused
    kind = request.GET.get("kind", "")
    if kind not in discovery.KINDS:
        message = _("kind must be one of: %(kinds)s.") % {"kinds": ", ".join(discovery.KINDS)}
        return JsonResponse({"detail": message}, status=400)
    found = discovery.targets(kind, request_scheme=request.scheme, request_host=request.get_host())
    return JsonResponse(found, safe=False)


@require_GET
async def deployment_metrics(request: HttpRequest, pk: int, index: int = 0) -> HttpResponse:
    """The server's own /metrics (TGI's tgi_*, vLLM's vllm:*), streamed through: 404 when the deployment (or
    replica) is not running, 502 when its server does not answer."""
    if (refused := refusal(request)) is not None:
        return refused
    found = await sync_to_async(discovery.scrape_upstream)(pk, index)
    if found is None:
        message = _("No running server of deployment %(pk)s (replica %(index)s).") % {"pk": pk, "index": index}
        return HttpResponse(message + "\n", status=404, content_type="text/plain")
    deployment, upstream = found
    headers = {"Authorization": f"Bearer {upstream.key}"} if upstream.key else {}
    session = aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT)
    try:
        answer = await session.get(f"{upstream.url}/metrics", headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        await session.close()
        return _bad_gateway(deployment.name, upstream.label, str(exc) or type(exc).__name__)
    if answer.status != 200:
        answer.release()
        await session.close()
        return _bad_gateway(deployment.name, upstream.label, f"HTTP {answer.status}")

    async def body():
        try:
            async for chunk in answer.content.iter_chunked(CHUNK):
                yield chunk
        finally:
            answer.release()
            await session.close()

    return StreamingHttpResponse(body(), content_type=answer.headers.get("Content-Type", metrics.CONTENT_TYPE))


def _bad_gateway(name: str, label: str, reason: str) -> HttpResponse:
    message = _("The server of deployment %(name)s (%(where)s) did not answer /metrics: %(reason)s") % {
        "name": name,
        "where": label,
        "reason": reason,
    }
    return HttpResponse(message + "\n", status=502, content_type="text/plain")
