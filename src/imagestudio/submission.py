"""Submit a payload: validate, check the provider URL, seal the key, write the job once."""

from __future__ import annotations

from typing import Any

from imagestudio.errors import PayloadInvalid, UnsafeURL
from imagestudio.imaging.netguard import ensure_public_url
from imagestudio.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.services import Services
from imagestudio.store.models import SubmitResult

LOCAL_USER = "local"


async def submit(services: Services, raw: Any, user: str | None) -> SubmitResult:
    """``user`` is the token's user; ``None`` in local mode, where the payload's is taken."""
    payload = parse_payload(raw)
    if user is not None and payload.user_id not in (None, user):
        raise PayloadInvalid("user_id", "does not match the user of the bearer token")
    owner = user or payload.user_id or LOCAL_USER
    limits = IntakeLimits(max_images=services.settings.max_images_per_job)
    spec = build_job_spec(payload, user_id=owner, limits=limits)
    try:
        await ensure_public_url(spec.provider.api_base, services.settings.private_allow_list())
    except UnsafeURL as exc:
        raise PayloadInvalid("options.api_base", exc.message) from exc
    result = await services.store.submit(spec, services.box.seal(spec.api_key))
    return result
