"""The worker hand-off under attack (--workers 2): what the main process reads on the shared UDP
port for a worker's peers is handed over only once the main process has checked it.

Honest viewers of camera a and b (tests/honest.py) watch while a stranger floods the port with
STUN success responses (random transaction ids) and a viewer on a worker (who knows its own
session's ICE ufrag from its answer) sends binding requests naming that ufrag with the wrong
MESSAGE-INTEGRITY or none.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from typing import Any

import pytest
from aioice import stun

from camtrack.client import Viewer

from .honest import CONTROL, CamtrackProcess, honest_pair

#: the stranger's stray responses, and the forged requests, and how long each flood lasts
STRAYS = 100_000
FORGED = 20_000
FLOOD_SECONDS = 4.0
#: the server may grow this much over the attack (MB)
RSS_BOUND = 40.0


def stray_response() -> bytes:
    """A binding success response to a transaction nobody started (an XOR-MAPPED-ADDRESS, no
    integrity: what a STUN server or a peer answering an unsigned check sends)."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                           transaction_id=os.urandom(12))
    message.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 40000)
    return bytes(message)


def forged_request(ufrag: str, signed: bool) -> bytes:
    """A binding request naming `ufrag`, signed with the wrong password or not at all."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=os.urandom(12))
    message.attributes["USERNAME"] = f"{ufrag}:attacker"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 12345
    if signed:
        message.add_message_integrity(b"not the password at all")
    message.add_fingerprint()
    return bytes(message)


def flood(port: int, datagrams: list[bytes], count: int, seconds: float) -> int:
    """Send `count` datagrams (cycling through `datagrams`) from a socket of its own, evenly over
    `seconds`; returns how many the kernel took."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        start = time.monotonic()
        batch = 500
        for first in range(0, count, batch):
            for i in range(first, min(count, first + batch)):
                try:
                    sock.sendto(datagrams[i % len(datagrams)], ("127.0.0.1", port))
                    sent += 1
                except BlockingIOError:
                    pass
            ahead = start + seconds * (first + batch) / count - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return sent


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workers_mux(health: dict[str, Any], key: str) -> int:
    """The sum of a counter of the workers' own muxes (what they were handed), from /healthz."""
    return sum(int(w.get("mux", {}).get(key, 0)) for w in health["workers"])


@pytest.mark.slow  # (a camtrack process and two workers of its own: see tests/conftest.py)
async def test_the_worker_hand_off_forwards_only_what_the_main_process_checked(loopback_ice):
    server = CamtrackProcess("--camera", "a=pattern", "--camera", "b=pattern", "--width", "320", "--height", "240",
                             "--workers", "2")
    attacker = Viewer(server.ws("a"))
    double: Viewer | None = None
    async with server:
        started = time.monotonic()
        health = await server.json("/healthz")
        assert [w["ready"] for w in health["workers"]] == [True, True]
        # (with a control viewer of an unattacked camtrack with the same options beside: the honest
        # viewers are held to what the flood did to them beyond what the machine's load, the flooding
        # threads' included, did to the control in the same seconds; tests/honest.py)
        async with honest_pair(server, "a", "b", control=True) as honest:
            try:
                # the attacker: a viewer on a worker (the least loaded takes it: one of the honest
                # viewers' workers), which reads its session's ufrag off its own answer
                await attacker.connect()
                await attacker.frames(5, timeout=30)
                ufrag = re.search(r"a=ice-ufrag:(\S+)", attacker.answer_sdp)[1]
                health = await server.json("/healthz")
                assert sorted(w["peers"] for w in health["workers"]) == [1, 2]
                # and the attacker's double on the control server, which connects the same and sends nothing
                assert honest.control is not None
                double = Viewer(honest.control.url)
                await double.connect()
                await double.frames(5, timeout=30)

                baseline_at = time.time()
                await asyncio.sleep(4.6)  # (a report may come late: a second's margin for it)
                honest.baseline = honest.windows(baseline_at, baseline_at + 3.5)
                health = await server.json("/healthz")
                handed = workers_mux(health, "received")
                stray_at_workers = workers_mux(health, "stray_stun")
                rss_before = server.rss_mb()
                pids = {"main": server.pid, **{f"worker {w['index']}": w["pid"] for w in health["workers"]}}
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                test_cpu_before = time.process_time()

                strays = [stray_response() for _ in range(500)]
                forged = [forged_request(ufrag, signed=i % 2 == 0) for i in range(500)]
                attack_at = time.time()
                peak = rss_before
                attacks = [asyncio.to_thread(flood, server.webrtc_port, strays, STRAYS, FLOOD_SECONDS),
                           asyncio.to_thread(flood, server.webrtc_port, forged, FORGED, FLOOD_SECONDS)]
                attacking = asyncio.ensure_future(asyncio.gather(*attacks))
                while not attacking.done():
                    peak = max(peak, server.rss_mb())
                    await asyncio.sleep(0.2)
                sent_strays, sent_forged = await attacking
                attack_until = time.time()
                cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / (attack_until - attack_at) for name, pid in pids.items()}
                cpu["attacker (this test)"] = (time.process_time() - test_cpu_before) / (attack_until - attack_at)
                await asyncio.sleep(1.5)  # (the reports of the window's last half second, a second's margin)
                during = honest.windows(attack_at, attack_until + 0.5)
                after_at = time.time()
                await asyncio.sleep(5.5)
                after = honest.windows(after_at, after_at + 4.5)
                peak = max(peak, server.rss_mb())
                rss_after = server.rss_mb()
                await asyncio.sleep(1.1)
                health = await server.json("/healthz")

                report = (f"strays sent {sent_strays}, forged sent {sent_forged}; handed to the workers "
                          f"{workers_mux(health, 'received') - handed}, stray STUN at the workers "
                          f"{workers_mux(health, 'stray_stun') - stray_at_workers}; refused here: forged "
                          f"{await server.metric('camtrack_worker_datagrams_refused_total', reason='forged')}; "
                          f"dropped at the backlog {sum(w['datagrams_dropped'] for w in health['workers'])}; "
                          f"RSS {rss_before:.0f} -> peak {peak:.0f} -> {rss_after:.0f} MB; CPU during the flood: "
                          + ", ".join(f"{name} {share:.2f}" for name, share in cpu.items()) + "; "
                          + "; ".join(f"{n}: baseline {honest.baseline[n]} | during {during[n]} | after {after[n]}"
                                      for n in (*honest.viewers, CONTROL)))
                print(report, f"({time.monotonic() - started:.0f} s since the server answered)")
                for name, viewer in honest.viewers.items():
                    assert viewer.error is None, (name, viewer.error, report)
                honest.check(during, f"during the flood; {report}")
                honest.check(after, f"after the flood; {report}")
                # nothing the main process could not check reached a worker: no forged request, no
                # stray response (the workers' own muxes saw none of them)
                assert workers_mux(health, "stray_stun") - stray_at_workers < 20, report
                assert workers_mux(health, "received") - handed < 2000, report
                # the forged requests were counted where they were dropped, and no honest datagram was lost
                assert await server.metric("camtrack_worker_datagrams_refused_total", reason="forged") >= sent_forged / 2, report
                assert sum(w["datagrams_dropped"] for w in health["workers"]) == 0, report
                assert server.log().count("failed its password check") == 1, report  # (one line a minute)
                assert health["viewers"] == 3, report
                assert peak - rss_before < RSS_BOUND, report
                # the attacker's own session is not broken by its forgeries either: it still plays
                await attacker.frames(5, timeout=10)
            finally:
                await attacker.close(bye=False)
                if double is not None:
                    await double.close(bye=False)


def test_the_main_process_checks_what_it_hands_a_worker():
    """The mux's side of the hand-off, without processes: requests checked with the password the
    worker claimed its ufrag with, responses only to the worker that announced the transaction."""
    from camtrack.outputs.webrtc.udpmux import MAX_ROUTES, UNPROVEN_BURST, UdpMux

    mux = UdpMux(0)
    handed: dict[str, list[tuple[bytes, tuple[str, int], bool]]] = {"one": [], "two": []}
    refused: dict[str, Any] = {}
    for name, ufrag in (("one", "u" * 16), ("two", "v" * 16)):
        assert mux.claim(ufrag, name * 8, lambda d, a, p, n=name: handed[n].append((d, a, p)))
        refused[name] = mux._foreign[ufrag].refused

    def request(ufrag: str, key: bytes | None) -> bytes:
        message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        message.attributes["USERNAME"] = f"{ufrag}:remote"
        if key is not None:
            message.add_message_integrity(key)
        message.add_fingerprint()
        return bytes(message)

    # forged (wrong password, none): dropped here, counted for the peer's worker, no route
    mux.datagram_received(request("u" * 16, b"wrong"), ("127.0.0.1", 1000))
    mux.datagram_received(request("u" * 16, None), ("127.0.0.1", 1000))
    assert handed == {"one": [], "two": []} and mux.stats.forged == 2 and refused["one"]["forged"] == 2
    assert mux.routes == 0
    # signed with the password: handed over, and its address routed here at once
    mux.datagram_received(request("u" * 16, b"one" * 8), ("127.0.0.1", 1000))
    assert len(handed["one"]) == 1 and handed["one"][0][2] and mux.routes == 1
    mux.datagram_received(b"\x17dtls", ("127.0.0.1", 1000))
    assert len(handed["one"]) == 2

    # a response from an address no peer proved: to the worker that announced the transaction,
    # once; any other is dropped unparsed, and never handed to every worker
    def response(transaction_id: bytes) -> bytes:
        return bytes(stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                  transaction_id=transaction_id))

    mux.expect("v" * 16, b"t" * 12)
    for _ in range(2):
        mux.datagram_received(response(b"t" * 12), ("127.0.0.1", 2000))
    for _ in range(100):
        mux.datagram_received(response(os.urandom(12)), ("127.0.0.1", 2000))
    assert len(handed["two"]) == 1 and not handed["two"][0][2] and len(handed["one"]) == 2
    assert mux.stats.stray_stun == 101
    # from a proven address, a response goes to its peer's worker (its own mux checks it)
    mux.datagram_received(response(os.urandom(12)), ("127.0.0.1", 1000))
    assert len(handed["one"]) == 3

    # its own credentials from more addresses than a peer has: routed up to MAX_ROUTES, then a
    # budget of a few a second
    for port in range(3000, 3000 + MAX_ROUTES + 200):
        mux.datagram_received(request("u" * 16, b"one" * 8), ("127.0.0.1", port))
    assert mux.routes == MAX_ROUTES  # (1000 was the first of them)
    assert len(handed["one"]) <= 3 + MAX_ROUTES - 1 + UNPROVEN_BURST + 2
    assert refused["one"]["unproven"] >= 200 - UNPROVEN_BURST - 2

    # a worker's peer that goes gives back its ufrag, routes and transactions
    mux.expect("v" * 16, b"s" * 12)
    mux.release("v" * 16)
    assert not mux._transactions and mux.foreign == 1


def test_the_hand_off_backlog_keeps_room_for_proven_traffic():
    """Datagrams from addresses no peer proved yet are dropped once a worker has UNPROVEN_BACKLOG
    waiting; those from proven addresses only at DATAGRAM_BACKLOG."""
    from types import SimpleNamespace

    from camtrack.workers.pool import DATAGRAM_BACKLOG, UNPROVEN_BACKLOG, WorkerProcess

    written: list[bytes] = []
    waiting = [0]
    writer = SimpleNamespace(is_closing=lambda: False, write=written.append,
                             transport=SimpleNamespace(get_write_buffer_size=lambda: waiting[0]))
    worker = WorkerProcess(SimpleNamespace(mux=None), 1)  # type: ignore[arg-type]
    worker._writer = writer  # type: ignore[assignment]
    waiting[0] = UNPROVEN_BACKLOG + 1
    worker.forward(b"response", ("127.0.0.1", 1), proven=False)
    worker.forward(b"rtcp", ("127.0.0.1", 2))
    assert len(written) == 1 and written[0].endswith(b"rtcp") and worker.datagrams_dropped == 1
    waiting[0] = DATAGRAM_BACKLOG + 1
    worker.forward(b"rtcp", ("127.0.0.1", 2))
    assert len(written) == 1 and worker.datagrams_dropped == 2
