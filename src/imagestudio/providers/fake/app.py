"""The fake provider's Starlette app: the OpenAI routes, the sample photos and the admin routes.

``create_fake_provider_app(FakeProviderConfig(...))`` builds an app that answers like OpenAI
(and OpenRouter for chat) closely enough for the official SDK; see the package docstring for
the routes and ``docs/fake-provider.md`` for the whole behaviour. A call goes: auth, parse,
quota, admission (limits), planned latency and fault (faults) while the image renders in a
thread (images), answer (protocol).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagestudio.providers.fake.config import FakeProviderConfig
from imagestudio.providers.fake.faults import check_auth, check_quota, raise_planned_fault
from imagestudio.providers.fake.images import SAMPLE_SIZE, fit_long_side, render, sample_photo
from imagestudio.providers.fake.limits import Admission
from imagestudio.providers.fake.protocol import (
    ParsedRequest,
    bearer,
    chat_body,
    images_body,
    json_object,
    parse_chat,
    parse_edit,
    parse_generation,
)
from imagestudio.providers.fake.reject import Reject, bad_request
from imagestudio.providers.fake.state import Call, FakeState
from imagestudio.providers.fake.wire import (
    REDIRECTED,
    WireFault,
    at_url,
    delivered,
    early_answer,
    find_fault,
    gateway_error,
    restyle_headers,
    restyled_reject,
    with_url,
)

Parser = Callable[[Request], Awaitable[ParsedRequest]]


def _render(parsed: ParsedRequest, render_size: int | None) -> bytes:
    size = fit_long_side(parsed.size, render_size)
    return render(parsed.source, parsed.prompt, size, parsed.output_format)


async def _produce(state: FakeState, parsed: ParsedRequest, admission: Admission) -> bytes | None:
    """Wait the planned latency (rendering meanwhile); raise the planned fault, if any."""
    plan = state.plan(admission, parsed.prompt)
    rendering = None
    if plan.wants_image(parsed.prompt):
        work = asyncio.to_thread(_render, parsed, state.config.render_size)
        rendering = asyncio.ensure_future(work)
    try:
        await asyncio.sleep(plan.latency)
        image = await rendering if rendering is not None else None
    except OSError as exc:
        raise bad_request("The image could not be processed.", "image", "invalid_image") from exc
    finally:
        if rendering is not None and not rendering.done():
            rendering.cancel()
    raise_planned_fault(plan, parsed.endpoint, parsed.prompt)
    return image


class FakeProvider:
    """The route handlers of one fake provider app, around its ``FakeState``."""

    def __init__(self, config: FakeProviderConfig) -> None:
        self.state = FakeState(config.validate())

    async def images_edits(self, request: Request) -> Response:
        return await self._serve(request, "images.edits", parse_edit)

    async def images_generations(self, request: Request) -> Response:
        return await self._serve(request, "images.generations", parse_generation)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat.completions", parse_chat)

    async def _serve(self, request: Request, endpoint: str, parser: Parser) -> Response:
        key = bearer(request)
        call = self.state.open_call(endpoint, key)
        try:
            response = await self._answer(request, call, key, parser)
        except Reject as reject:
            self.state.close_call(call, reject.status, reject.code)
            return self._rejected(reject)
        except ClientDisconnect:  # the client went away mid-upload (a killed worker)
            self.state.close_call(call, 499, "client_closed_request")
            return Response(status_code=499)
        self.state.close_call(call, response.status_code, None)
        return response

    async def _answer(
        self, request: Request, call: Call, key: str | None, parser: Parser
    ) -> Response:
        check_auth(key)
        assert key is not None
        parsed = await parser(request)
        call.model, call.prompt = parsed.model, parsed.prompt
        fault = find_fault(parsed.prompt, self.state.config.fault)
        early = early_answer(fault, request)
        if early is not None:
            return early
        check_quota(key)
        admission = self.state.admit(parsed.model)
        try:
            image = await _produce(self.state, parsed, admission)
        except Reject as reject:
            reject.headers = admission.headers | reject.headers
            raise
        finally:
            self.state.release(admission)
        if fault is not None and fault.kind == "http":
            return gateway_error(fault)
        return self._image_answer(request, parsed, image, fault, admission)

    def _image_answer(
        self,
        request: Request,
        parsed: ParsedRequest,
        image: bytes | None,
        fault: WireFault | None,
        admission: Admission,
    ) -> Response:
        if parsed.endpoint == "chat.completions":
            body = chat_body(parsed, image)
        else:
            body = images_body(parsed, image, self._file_url(request, parsed, image))
        if fault is not None and fault.kind == "url" and image is not None:
            body = with_url(body, self._fault_url(request, fault, image))
        return delivered(fault, body, self._styled(admission.headers, 200), image)

    def _fault_url(self, request: Request, fault: WireFault, image: bytes) -> str:
        """The image URL a ``[[url:...]]`` fault answers with."""
        if fault.arg(0) == "at":
            return at_url(fault)
        missing = fault.arg(0) == "404"
        file_id = "missing" if missing else self.state.store_file(image)
        return str(request.url_for("fake_file", file_id=file_id))

    def _styled(self, headers: dict[str, str], status: int) -> dict[str, str]:
        """The rate-limit headers in the configured shape (``ratelimit_style``)."""
        config = self.state.config
        if config.ratelimit_headers_on_429_only and status != 429:
            headers = {k: v for k, v in headers.items() if not k.startswith("x-ratelimit-")}
        return restyle_headers(headers, config.ratelimit_style, time.time())

    def _rejected(self, reject: Reject) -> Response:
        if reject.status == 429 and reject.code == "rate_limit_exceeded":
            return restyled_reject(reject, self.state.config.ratelimit_style)
        reject.headers = self._styled(reject.headers, reject.status)
        return reject.response()

    def _file_url(self, request: Request, parsed: ParsedRequest, image: bytes | None) -> str | None:
        """Where a ``response_format=url`` answer's image is served (kept for a while)."""
        if image is None or parsed.response_format != "url":
            return None
        file_id = self.state.store_file(image)
        return str(request.url_for("fake_file", file_id=file_id))

    async def stats(self, request: Request) -> Response:
        with_calls = request.query_params.get("calls", "1") not in ("0", "false", "no")
        return JSONResponse(self.state.stats(with_calls))

    async def reset(self, request: Request) -> Response:
        del request
        self.state.reset()
        return JSONResponse({"ok": True})

    async def configure(self, request: Request) -> Response:
        try:
            self.state.reconfigure(await json_object(request))
        except (ValueError, TypeError) as exc:
            return Reject(400, str(exc)).response()
        except Reject as reject:
            return reject.response()
        return JSONResponse(self.state.config.as_dict())

    async def sample(self, request: Request) -> Response:
        index = int(request.path_params["n"])
        size = fit_long_side(SAMPLE_SIZE, self.state.config.render_size)
        data = self.state.samples.get(index, size)
        if data is None:
            data = await asyncio.to_thread(sample_photo, index, size)
            self.state.samples.put(index, size, data)
        return Response(data, media_type="image/jpeg")

    async def file(self, request: Request) -> Response:
        data = self.state.files.get(request.path_params["file_id"])
        if data is None:
            return Reject(404, "No such file.", code="not_found").response()
        return Response(data, media_type="image/png")


def create_fake_provider_app(config: FakeProviderConfig | None = None) -> Starlette:
    """A fresh fake provider app with its own state (``app.state.fake`` is the ``FakeState``)."""
    provider = FakeProvider(config or FakeProviderConfig())
    api = [
        Route(f"{prefix}/v1/images/edits", provider.images_edits, methods=["POST"])
        for prefix in ("", REDIRECTED)
    ]
    api += [
        Route(f"{prefix}/v1/images/generations", provider.images_generations, methods=["POST"])
        for prefix in ("", REDIRECTED)
    ]
    api += [
        Route(f"{prefix}/v1/chat/completions", provider.chat_completions, methods=["POST"])
        for prefix in ("", REDIRECTED)
    ]
    routes = [
        *api,
        Route("/_fake/stats", provider.stats, methods=["GET"]),
        Route("/_fake/reset", provider.reset, methods=["POST"]),
        Route("/_fake/config", provider.configure, methods=["POST"]),
        Route("/samples/{n:int}.jpg", provider.sample, methods=["GET"]),
        Route("/files/{file_id}.png", provider.file, methods=["GET"], name="fake_file"),
    ]
    app = Starlette(routes=routes)
    app.state.fake = provider.state
    return app
