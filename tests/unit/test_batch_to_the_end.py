"""A normalise batch cut short by a cancellation (a worker stopping) is produced to
the end before the cancellation goes on: ``take_events`` acknowledges the batch's
events as the agent unwinds, so an unfinished batch would commit offsets of calls
that were never produced."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.stream.normalise_stage import to_the_end


def _batch(sent: list[int], release: asyncio.Event, n: int = 3):
    async def produce() -> None:
        for i in range(n):
            if i == 1:
                await release.wait()        # the agent is cancelled while this waits
            sent.append(i)
    return produce()


async def _cancel_midway(times: int) -> tuple[list[int], BaseException | None]:
    sent: list[int] = []
    release = asyncio.Event()
    agent = asyncio.ensure_future(to_the_end(_batch(sent, release)))
    await asyncio.sleep(0)
    for _ in range(times):
        agent.cancel()
        await asyncio.sleep(0.01)
        assert not agent.done()             # still finishing the batch
    release.set()
    try:
        await agent
    except BaseException as exc:  # noqa: BLE001 - the outcome is what is checked
        return sent, exc
    return sent, None


@pytest.mark.parametrize("times", [1, 3])
def test_a_cancelled_batch_is_produced_to_the_end_then_the_cancellation_goes_on(times):
    sent, exc = asyncio.run(_cancel_midway(times))
    assert sent == [0, 1, 2]
    assert isinstance(exc, asyncio.CancelledError)


def test_an_uncancelled_batch_just_completes_and_a_failing_one_raises_its_error():
    async def ok() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise RuntimeError("produce failed")

    asyncio.run(to_the_end(ok()))
    with pytest.raises(RuntimeError, match="produce failed"):
        asyncio.run(to_the_end(fails()))


def test_a_batch_failing_after_the_cancellation_raises_its_error_not_the_cancellation():
    """The agent then exits the process before the acknowledgements (os._exit)."""
    async def main() -> None:
        release = asyncio.Event()

        async def fails_later() -> None:
            await release.wait()
            raise RuntimeError("produce failed")

        agent = asyncio.ensure_future(to_the_end(fails_later()))
        await asyncio.sleep(0)
        agent.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await agent

    with pytest.raises(RuntimeError, match="produce failed"):
        asyncio.run(main())
