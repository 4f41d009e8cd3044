"""The project's own OpenAI-compatible image server, with enforced limits and fault injection.

``create_fake_provider_app(FakeProviderConfig(...))`` builds a Starlette app that answers like
OpenAI (and OpenRouter for chat) closely enough for the official SDK; ``run_fake_provider``
serves one (``imagestudio fake-provider``; docs/fake-provider.md):

- ``POST /v1/images/edits`` (multipart), ``POST /v1/images/generations`` (JSON),
  ``POST /v1/chat/completions`` (image in, ``message.images`` out).
- ``Authorization: Bearer <key>``. Key triggers: ``bad`` -> 401 ``invalid_api_key``;
  ``noquota`` -> 429 ``insufficient_quota``. Prompt triggers: ``[[refuse]]`` -> 400
  ``moderation_blocked``; ``[[noimage]]`` -> 200 without an image; ``[[slow]]`` -> 10x latency.
- Limits: ``concurrency`` (requests in flight) and ``rpm`` (GCRA: ``rpm`` per 60 s, bursts of
  ``rpm_burst``, by default one second's worth) answer 429 ``rate_limit_exceeded`` with
  ``retry-after``, ``retry-after-ms`` and ``x-ratelimit-*`` headers. ``error_rate`` of the
  admitted requests answer 500 ``server_error`` after their latency.
- Wire faults (``wire.py``): prompt triggers ``[[json:...]]``, ``[[drop:...]]``,
  ``[[redirect:...]]``, ``[[url:...]]``, ``[[drip:N:T]]``, ``[[big:N]]``, ``[[http:CODE]]``,
  ``[[429:STYLE]]`` (or the ``fault`` knob for every call); ``ratelimit_style`` reshapes the
  rate-limit headers (``openai``, ``ietf``, ``epoch``, ``bare``).
- ``GET /_fake/stats``, ``POST /_fake/reset``, ``POST /_fake/config`` for tests and benchmarks;
  ``GET /samples/{n}.jpg`` serves generated source photos; ``GET /files/{id}.png`` serves the
  images of ``response_format=url`` answers (dall-e models only).

The modules, in the order a call meets them::

    config.py    FakeProviderConfig: limits, latency, faults, render size (validated)
    app.py       the Starlette app and its routes (create_fake_provider_app)
    protocol.py  OpenAI's wire format: requests parsed or refused, answers shaped
    faults.py    key and prompt triggers, drawn latency, the error rate (pure decisions)
    wire.py      wire faults: malformed 200s, dropped connections, redirects, URL answers,
                 drip-fed and oversized bodies, gateway 5xx, 429s in other shapes
    limits.py    concurrency and rpm (GCRA) limits, the 429s and x-ratelimit-* headers
    images.py    edits and generations drawn with Pillow; samples.py the source photos
    state.py     FakeState: counters, call log, files, the limits and random sequence
    reject.py    Reject, the OpenAI-shaped error answer
    server.py    run_fake_provider (uvicorn)
"""

from imagestudio.providers.fake.app import create_fake_provider_app
from imagestudio.providers.fake.config import FakeProviderConfig
from imagestudio.providers.fake.server import run_fake_provider

__all__ = ["FakeProviderConfig", "create_fake_provider_app", "run_fake_provider"]
