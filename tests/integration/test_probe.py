"""The scheduler's probe: a job run to the end through the real store, worker and fake
provider shows every stage of every task, and every governor move with the state saved."""

from __future__ import annotations

from collections import Counter

import httpx

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.policy.governor import GovernorState, Observation
from imagestudio.runtime.services import open_services
from imagestudio.scheduler.probe import NO_PROBE, Probe, Stage
from imagestudio.settings import Settings
from imagestudio.store.records import ClaimedTask
from testkit.payloads import batch_payload

IMAGES = 5  # the seed's batch: (3, 1, 1)
PER_TASK = (
    Stage.SOURCE_FETCH,
    Stage.STILL_HELD,
    Stage.PROVIDER_CALL,
    Stage.END_CALL,
    Stage.STORAGE_PUT,
    Stage.FINISH,
)


class Recorder(Probe):
    """Keeps what it is shown, in order."""

    def __init__(self) -> None:
        self.moves: list[tuple[int, Observation, GovernorState]] = []
        self.stages: list[tuple[Stage, float]] = []

    def governor(self, task: ClaimedTask, observation: Observation, state: GovernorState) -> None:
        self.moves.append((task.image_id, observation, state))

    def stage(self, name: Stage, seconds: float) -> None:
        self.stages.append((name, seconds))

    def count(self) -> Counter[Stage]:
        return Counter(name for name, _ in self.stages)


async def test_the_probe_sees_every_stage_and_every_governor_move(
    settings: Settings, fake_provider: BackgroundServer
) -> None:
    probe = Recorder()
    async with open_services(settings, probe=probe) as services:
        worker = services.worker(4)
        assert worker.probe is probe  # the worker shares the runner's probe
        job = (
            await services.jobs.submit(batch_payload(fake_provider.url, "j", size=256), None)
        ).job
        await worker.run_until_idle()
        images = await services.store.images(job.id)
        [view] = await services.store.governor_states()

    assert [image.status for image in images] == ["succeeded"] * IMAGES
    counts = probe.count()
    assert {stage: counts[stage] for stage in PER_TASK} == dict.fromkeys(PER_TASK, IMAGES)
    assert counts[Stage.CLAIM] >= 1
    assert set(counts) == set(Stage)
    assert all(seconds >= 0 for _, seconds in probe.stages)
    calls = [seconds for name, seconds in probe.stages if name is Stage.PROVIDER_CALL]
    assert min(calls) >= 0.015  # the fake answers after about 20 ms

    assert sorted(image_id for image_id, _, _ in probe.moves) == sorted(i.id for i in images)
    assert all(observation.kind == "ok" for _, observation, _ in probe.moves)
    assert all(observation.latency is not None for _, observation, _ in probe.moves)
    assert view.state in [state for _, _, state in probe.moves]  # what was saved, it saw


async def test_the_probe_sees_429s_move_the_governor(
    settings: Settings, fake_provider: BackgroundServer
) -> None:
    # One call at a time at the provider, while the governor starts at four.
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{fake_provider.url}/_fake/config", json={"concurrency": 1})
        answer.raise_for_status()
    probe = Recorder()
    async with open_services(settings, probe=probe) as services:
        payload = batch_payload(fake_provider.url, "j", size=256)
        job = (await services.jobs.submit(payload, None)).job
        await services.worker(4).run_until_idle()
        images = await services.store.images(job.id)

    assert [image.status for image in images] == ["succeeded"] * IMAGES
    limited = [(obs, state) for _, obs, state in probe.moves if obs.kind == "rate_limited"]
    assert limited, "the fake allowed more than one call at a time"
    assert all(state.rate_limited >= 1 for _, state in limited)
    assert min(state.effective_window for _, state in limited) < settings.governor_initial_window
    calls = probe.count()[Stage.PROVIDER_CALL]
    assert calls == len(probe.moves) == IMAGES + len(limited)  # every call ended, each seen


async def test_without_a_probe_nothing_is_watched(settings: Settings) -> None:
    async with open_services(settings) as services:
        assert services.runner.probe is NO_PROBE
        assert services.worker(1).probe is NO_PROBE
    NO_PROBE.stage(Stage.CLAIM, 0.1)  # the default accepts everything and keeps nothing
    assert vars(NO_PROBE) == {}
