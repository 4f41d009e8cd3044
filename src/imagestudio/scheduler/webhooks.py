"""The webhook sender: turns outbox events into messages and delivers them, at least once.

Two steps, each safe to run in any number of processes at once (every worker process runs
one; docs/webhooks.md):

1. **pump**: read the outbox as the ``webhooks`` cursor consumer, make the messages of the
   events read (``store.webhooks.enqueue``: once each, whoever reads them), then ack. A
   sender that dies between the two reads the same events again and makes nothing twice.
2. **dispatch**: lease due messages, send each (``webhook_send.send_webhook``), record the
   try: delivered, tried again later (``policy.webhooks.after_failure``), or given up after
   a day. A sender killed mid-try leaves its lease to run out; the message is sent again,
   with the same ``webhook-id``, which is how a receiver drops a repeat.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import structlog

from imagestudio.errors import ImageStudioError, WebhookFailed
from imagestudio.observability.metrics import Metrics
from imagestudio.policy.webhooks import GiveUp, RetryPlan, after_failure
from imagestudio.scheduler.webhook_send import send_webhook
from imagestudio.security.crypto import SecretBox
from imagestudio.security.http import Outbound
from imagestudio.store.store import Store
from imagestudio.store.webhooks import Delivery

log = structlog.get_logger("imagestudio.webhooks")

CONSUMER = "webhooks"


@dataclass(frozen=True, slots=True)
class SenderConfig:
    plan: RetryPlan
    timeout: float = 10.0
    poll_interval: float = 1.0
    batch: int = 16
    server_secret: str | None = None  # IMAGESTUDIO_WEBHOOK_SECRET

    @property
    def lease_seconds(self) -> float:
        """How long a try holds its message: the try's time limit and a margin (a sender
        that died mid-try has its message sent again this long after the try began)."""
        return self.timeout + 2


class WebhookSender:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        http: Outbound,
        config: SenderConfig,
        *,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.store, self.box, self.http, self.config = store, box, http, config
        self.metrics = metrics
        self.rng = rng or random.Random()

    async def run(self, stop: asyncio.Event) -> None:
        """Pump and dispatch until ``stop``; errors are logged and the loop goes on."""
        while not stop.is_set():
            busy = False
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook sender step failed; will retry")
            if not busy:
                try:
                    await asyncio.wait_for(stop.wait(), self.config.poll_interval)
                except TimeoutError:
                    pass

    async def run_once(self) -> bool:
        """One pump and one dispatch; whether there was anything to do."""
        pumped = await self.pump()
        sent = await self.dispatch()
        return bool(pumped or sent)

    async def pump(self, limit: int = 500) -> int:
        """Make the messages of the outbox's next events; returns how many events were read."""
        events = await self.store.outbox.read(CONSUMER, limit=limit)
        if not events:
            return 0
        await self.store.enqueue_webhooks(events)
        await self.store.outbox.ack(CONSUMER, events[-1].id)
        return len(events)

    async def dispatch(self) -> int:
        """Send the due messages, up to a batch at once; returns how many were tried."""
        due = await self.store.claim_webhooks(self.config.batch, self.config.lease_seconds)
        await asyncio.gather(*(self._try(delivery) for delivery in due))
        return len(due)

    async def _try(self, delivery: Delivery) -> None:
        status: int | None = None
        error: str | None = None
        try:
            url, secret = self._endpoint(delivery)
            status = await send_webhook(
                self.http,
                url,
                secret,
                msg_id=delivery.msg_id,
                payload=delivery.payload,
                at=self.store.clock(),
                time_limit=self.config.timeout,
            )
        except WebhookFailed as exc:
            status, error = exc.status_code, exc.message
        except ImageStudioError as exc:
            error = exc.message
        await self._record(delivery, status, error)

    def _endpoint(self, delivery: Delivery) -> tuple[str, str]:
        endpoint = delivery.endpoint
        if endpoint is None:
            raise ImageStudioError("the job's webhook endpoint is gone")
        url = self.box.open(endpoint.url_enc)
        if endpoint.secret_enc is not None:
            return url, self.box.open(endpoint.secret_enc)
        if self.config.server_secret is None:
            raise ImageStudioError("no webhook secret: set IMAGESTUDIO_WEBHOOK_SECRET")
        return url, self.config.server_secret

    async def _record(self, delivery: Delivery, status: int | None, error: str | None) -> None:
        next_at = None
        result = "delivered"
        if error is not None:
            now = self.store.clock()
            decision = after_failure(
                delivery.attempts, delivery.created_at, now, self.config.plan, self.rng
            )
            if isinstance(decision, GiveUp):
                error, result = f"{error}; {decision.reason}", "failed"
            else:
                next_at, result = decision.at, "retry"
        kept = await self.store.record_webhook(
            delivery, status_code=status, error=error, next_attempt_at=next_at
        )
        self.metrics.webhook_tries.labels(result).inc()
        log.info(
            "webhook try",
            msg_id=delivery.msg_id,
            type=delivery.type,
            attempt=delivery.attempts,
            result=result,
            status_code=status,
            error=error,
            recorded=kept,
        )
