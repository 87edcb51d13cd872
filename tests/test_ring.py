"""The numbered ring: live readers, newest-only readers, in-order readers, open and closed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from camtrack.media.ring import Overrun, Ring


@dataclass(frozen=True)
class Item:
    seq: int


class Closed(Exception):
    pass


def ring_of(size: int, *numbers: int) -> Ring[Item]:
    ring: Ring[Item] = Ring(size, Closed)
    ring.reopen()
    for n in numbers:
        ring.publish(Item(n))
    return ring


async def test_a_live_reader_gets_the_next_item_while_it_is_held() -> None:
    ring = ring_of(4, 1, 2, 3, 4)
    read = await ring.next(2)
    assert (read.item.seq, read.skipped) == (3, 0)


async def test_a_live_reader_that_fell_behind_gets_the_newest_and_knows_it_skipped() -> None:
    ring = ring_of(3, 1, 2, 3, 4, 5, 6)  # holds 4, 5, 6
    read = await ring.next(1)
    assert (read.item.seq, read.skipped) == (6, 4)
    lagging = await ring.next(4, max_lag=1)
    assert (lagging.item.seq, lagging.skipped) == (6, 1)


async def test_a_first_read_and_a_newest_reader_take_the_newest() -> None:
    ring = ring_of(4, 1, 2, 3)
    assert (await ring.next(0)).item.seq == 3
    read = await ring.next(1, newest=True)
    assert (read.item.seq, read.skipped) == (3, 1)


async def test_an_in_order_reader_gets_every_item_or_an_overrun() -> None:
    ring = ring_of(3, 1, 2, 3)
    assert [(await ring.next_in_order(n)).seq for n in (1, 2)] == [2, 3]
    ring.publish(Item(4))
    ring.publish(Item(5))
    with pytest.raises(Overrun) as overrun:
        await ring.next_in_order(1)
    assert (overrun.value.wanted, overrun.value.oldest) == (2, 3)


async def test_a_reader_waits_for_the_next_publish() -> None:
    ring = ring_of(2, 1)
    waiting = asyncio.ensure_future(ring.next(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    ring.publish(Item(2))
    assert (await asyncio.wait_for(waiting, 1)).item.seq == 2


async def test_closing_wakes_the_waiting_readers_with_the_closing_error() -> None:
    ring = ring_of(2, 1)
    waiting = asyncio.ensure_future(ring.next(1))
    await asyncio.sleep(0)
    ring.close()
    with pytest.raises(Closed):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(Closed):
        await ring.next(0)
    assert ring.newest is None and len(ring) == 0


def test_numbers_only_grow_and_since_finds_the_run_from_a_match() -> None:
    ring = ring_of(8, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError):
        ring.publish(Item(5))
    assert [i.seq for i in ring.since(lambda i: i.seq % 3 == 0)] == [3, 4, 5]
    assert ring.since(lambda i: i.seq == 1, within=3) == []
    assert ring.get(4) == Item(4) and ring.get(9) is None
