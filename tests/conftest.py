"""Shared fixtures: a camtrack server on loopback and ICE kept on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from camtrack import Config, create_app
from camtrack.connections import make_runner
from camtrack.outputs.webrtc.ice import restrict_host_addresses

Server = tuple[str, web.Application]

# The fast lane, `python -m pytest -m "not slow"` (521 tests in 146 s on two cores, other work beside), leaves out what is
# marked `slow` here: whole modules that start browsers, other servers, worker processes or a
# camtrack process of their own, and single tests that took 2.4 s or more in a run of the whole
# suite on a CI-sized machine (`python -m pytest --durations=0`); a test file may mark its own
# tests `@pytest.mark.slow` too (the attacks with a camtrack process of their own do). `.ci/run` runs
# everything.
SLOW_MODULES = {
    "test_bench", "test_browser", "test_browser_fallback", "test_janus", "test_real_rtsp", "test_settings",
    "test_shutdown", "test_soak", "test_start", "test_turn", "test_workers", "test_reverse_proxy",
    "test_firefox", "test_event_outputs", "test_overlay_page", "test_quality_links", "test_worker_tiers",
}
SLOW_TESTS = {
    "test_demux.py::test_rtsp_over_tcp",
    "test_encoder.py::test_late_joiner_starts_promptly_on_a_keyframe",
    "test_encoder.py::test_viewers_joining_in_a_loop_cannot_force_a_keyframe_each",
    "test_encoder.py::test_viewers_receive_identical_encoded_frames",
    "test_faults.py::test_file_source_loops_and_url_source_reconnects",
    "test_fuzz.py::test_random_messages",
    "test_hostile_rtc.py::test_a_nack_flood_gets_a_capped_share_of_the_stream",
    "test_hostile_rtc.py::test_a_pli_flood_does_not_raise_anyones_keyframe_rate",
    "test_hostile_rtc.py::test_junk_at_an_unconnected_peer_costs_bounded_memory",
    "test_limits.py::test_max_viewers_counts_viewers_not_sockets",
    "test_limits.py::test_mjpeg_stalled_reader_is_cut_off_and_frees_its_place",
    "test_limits.py::test_websocket_that_does_not_read",
    "test_limits.py::test_whep_bodies_have_a_deadline_and_a_bound",
    "test_load.py::test_a_crowd_joining_at_once_is_paced_and_the_rest_refused",
    "test_load.py::test_loop_cpu_is_the_event_loop_threads_own",
    "test_passthrough.py::test_a_viewer_joining_mid_gop_gets_the_live_picture_through_the_bridge",
    "test_passthrough.py::test_auto_passes_through_what_it_can_and_transcodes_the_rest",
    "test_passthrough.py::test_passthrough_serves_the_cameras_own_h264",
    "test_rtsp.py::test_a_session_gives_annexb_pictures_with_parameter_sets",
    "test_streaming.py::test_three_viewers_share_one_source",
    "test_udpmux.py::test_junk_from_strangers_at_the_shared_port_costs_no_memory",
    "test_whep.py::test_whep_errors",
    "test_wsvideo.py::test_a_cameras_own_h264_joined_mid_gop_is_bridged_then_its_own",
    "test_wsvideo.py::test_a_reader_that_does_not_read_is_skipped_then_cut_off",
    "test_wsvideo.py::test_a_slow_reader_skips_to_the_next_keyframe",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES or f"{item.path.name}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def loopback_ice():
    """Every peer connection in this process gathers 127.0.0.1 only: no packet leaves loopback."""
    undo = restrict_host_addresses(["127.0.0.1"])
    yield
    undo()


@pytest.fixture
async def serve(loopback_ice) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start camtrack apps on 127.0.0.1 with a free port; returns (ws URL, app)."""
    runners: list[web.AppRunner] = []

    async def start(**settings) -> Server:
        settings.setdefault("source", "pattern")
        settings.setdefault("linger", 0.5)
        settings.setdefault("host", "127.0.0.1")
        # a socket per peer unless a test asks for the shared port (8555 may be another run's)
        settings.setdefault("webrtc_port", 0)
        # no RTSP unless a test asks for it (8554 may be another run's)
        settings.setdefault("rtsp_port", 0)
        # admission from measured load is tested in test_load.py; elsewhere a busy test machine
        # (Chromium, other servers) must not turn viewers away
        for check in ("max_loop_lag", "send_budget", "max_picture_age", "max_cpu"):
            settings.setdefault(check, 0)
        app, runner, port = await run_app(Config(port=0, **settings))
        runners.append(runner)
        return f"http://127.0.0.1:{port}/ws", app

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), 30)


async def run_app(config: Config) -> tuple[web.Application, web.AppRunner, int]:
    """camtrack's app for `config` on 127.0.0.1 at a free port: (app, its runner, the port). The
    caller stops it (`runner.cleanup()`; the shutdown tests do, mid-test)."""
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return app, runner, site._server.sockets[0].getsockname()[1]


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Wait until `predicate()` is true, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def watched_stage(url: str, camera: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A /ws viewer of `url` that has decoded 3 pictures of `camera`, and the camera's processing stage
    (which runs only while read: the viewer keeps it running); the viewer closed at the end."""
    from camtrack.client import Viewer

    viewer = Viewer(url)
    try:
        await viewer.connect()
        await viewer.frames(3)
        stage = camera.processing
        assert stage is not None
        yield viewer, stage
    finally:
        await viewer.close()
