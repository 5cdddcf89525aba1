"""The agent's clock ends when it is cancelled, whatever else happens in that moment.

It once waited with asyncio.wait_for, which (Python 3.11) swallows a cancellation that
comes in the same turn of the loop as the event it waits for: at a stop, the clock
outlived its cancellation and, the core's deadlines past for good, spun at 100 % of a CPU
as SCHED_FIFO until killed (two agents did, for half an hour). The clock runs here on a
stand-in of the agent with the core of a stopped node."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hapair.agent import Agent

pytestmark = pytest.mark.unit


def _stand_in(loop: asyncio.AbstractEventLoop, deadline: float) -> Any:
    return SimpleNamespace(
        node=SimpleNamespace(next_deadline=lambda: deadline),
        _wake=asyncio.Event(),
        inbox=asyncio.Queue(),
        loop=loop,
        timer_late_max=0.0,
    )


@pytest.mark.parametrize("past", [False, True], ids=["deadline ahead", "deadline past"])
@pytest.mark.parametrize("turns", range(4))
def test_a_cancelled_clock_ends_even_as_it_is_woken(past: bool, turns: int) -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        agent = _stand_in(loop, loop.time() + (-1.0 if past else 10.0))
        clock = asyncio.create_task(Agent._clock(agent))
        for _ in range(turns):
            await asyncio.sleep(0)
        agent._wake.set()  # an input was just handled...
        clock.cancel()  # ...as the agent stops
        done, _ = await asyncio.wait([clock], timeout=1.0)
        if not done:
            clock.cancel()
            await asyncio.wait([clock], timeout=1.0)
        return bool(done)

    assert asyncio.run(scenario()), "the clock outlived its cancellation"
