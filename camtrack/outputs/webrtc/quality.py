"""A WebRTC viewer's link, as its RTCP tells it, turned into samples for camtrack.media.quality's
`AutoQuality` (docs/quality.md): once a second, the newest receiver report's loss fraction and the
round-trip time aiortc's sender estimates from it (`RTCRtpSender.getStats()`, its
remote-inbound-rtp entry), and the receiver's estimated maximum bitrate (REMB) when it sends one
(rtcp.py's router hook records it). A sample is bad when

- the report says more than LOSS_BAD of the packets were lost, or its NACKs named more than that
  share of the packets sent since the last sample (at once, where reports come about a second
  apart and count what retransmission recovered as received), or
- the round-trip time stands DELAY_BAD above the lowest this peer has seen (a queue building up in
  front of a narrow link, which loss may follow only later; Chromium's reports count packets
  recovered by retransmission as received, so its loss says little), or
- the receiver's REMB is under REMB_SHARE of what the server sends it and not growing, once it means
  something: Chromium's stays at its start value (300 kbit/s) for its first seconds (REMB_WARMUP),
  and after a move up it climbs about 8 % a second from what the lower tier needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpSender

from ...media.quality import AutoQuality, TierReader

logger = logging.getLogger(__name__)

#: seconds between samples
PERIOD = 0.5
#: a receiver report with more than this share of packets lost is a bad sample
LOSS_BAD = 0.08
#: a round-trip time this far above the lowest seen is a bad sample (seconds)
DELAY_BAD = 0.15
#: a REMB under this share of the bitrate sent, and not growing, is a bad sample ...
REMB_SHARE = 0.5
#: ... from this many seconds after the viewer's first report on
REMB_WARMUP = 6.0


@dataclass
class LinkSample:
    """What the viewer's last receiver report said: loss fraction, round-trip time (s), REMB (bit/s)."""

    loss: float | None = None
    rtt: float | None = None
    remb: int | None = None
    #: what the server sent it over the last sample (bit/s), and the share of those packets NACKed
    sent: float | None = None
    nacked: float | None = None


class LinkWatch:
    """Samples one WebRTC viewer's link (see the module's docstring) into its `AutoQuality`."""

    def __init__(self, sender: RTCRtpSender, reader: TierReader, remb: Callable[[], int | None] = lambda: None,
                 nacked: Callable[[], int] = lambda: 0, period: float = PERIOD) -> None:
        self.sender = sender
        self.auto = AutoQuality(reader)
        self.remb = remb
        self.nacked = nacked
        self.period = period
        self.sample = LinkSample()
        self.min_rtt: float | None = None
        self._last_report: object = None
        #: (monotonic, bytes sent, packets sent, packets NACKed) at the last sample, the first
        #: report's time, recent REMBs
        self._sent: tuple[float, int, int, int] | None = None
        self._first: float | None = None
        self._rembs: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                report = await self.sender.getStats()
            except Exception:  # noqa: BLE001 - a sender closing under us: no sample
                continue
            values = list(report.values())
            remote = next((s for s in values if getattr(s, "type", None) == "remote-inbound-rtp"), None)
            outbound = next((s for s in values if getattr(s, "type", None) == "outbound-rtp"), None)
            now = time.monotonic()
            sent = nack_share = None
            nacked = self.nacked()
            if outbound is not None:
                if self._sent is not None and now > self._sent[0]:
                    sent = 8 * (outbound.bytesSent - self._sent[1]) / (now - self._sent[0])
                    packets = outbound.packetsSent - self._sent[2]
                    nack_share = (nacked - self._sent[3]) / packets if packets > 0 else None
                self._sent = (now, outbound.bytesSent, outbound.packetsSent, nacked)
            fraction_lost = rtt = None
            if remote is not None and remote.timestamp != self._last_report:  # (a report since the last sample)
                self._last_report = remote.timestamp
                fraction_lost = getattr(remote, "fractionLost", None)
                rtt = getattr(remote, "roundTripTime", None)
            elif self._first is None:
                continue  # no report yet: not watching yet
            self.observe(fraction_lost, rtt, sent, now, nack_share)

    def observe(self, fraction_lost: float | None, rtt: float | None, sent: float | None = None,
                now: float | None = None, nack_share: float | None = None) -> None:
        """One sample: the newest receiver report's loss (aiortc gives RTCP's fraction, 0..255) and
        round-trip time (None: no report since the last sample), the bitrate sent and the share of
        packets sent that NACKs named since the last sample."""
        now = time.monotonic() if now is None else now
        if self._first is None:
            self._first = now
        loss = None if fraction_lost is None else fraction_lost / 256
        if rtt is None:
            rtt = self.sample.rtt  # (no report since the last sample: the last one's stands)
        else:
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        remb = self.remb()
        self.sample = LinkSample(loss if loss is not None else self.sample.loss, rtt, remb, sent, nack_share)
        if remb is not None:
            self._rembs = [*self._rembs[-3:], remb]
        bad = None
        if loss is not None and loss > LOSS_BAD:
            bad = f"loss {loss * 100:.0f}%"
        elif nack_share is not None and nack_share > LOSS_BAD:
            bad = f"NACKs for {min(1.0, nack_share) * 100:.0f}% of packets"
        elif rtt is not None and self.min_rtt is not None and rtt - self.min_rtt > DELAY_BAD:
            bad = f"delay +{(rtt - self.min_rtt) * 1000:.0f} ms"
        elif (remb is not None and sent and now - self._first >= REMB_WARMUP and remb < REMB_SHARE * sent
              and len(self._rembs) == 4 and remb <= 1.05 * self._rembs[0]):
            bad = f"REMB {remb / 1000:.0f} kbit/s, sent {sent / 1000:.0f}"
        logger.debug("link sample: loss %s rtt %s (lowest %s) REMB %s sent %s: %s", loss, rtt, self.min_rtt,
                     remb, sent, bad or "clear")
        self.auto.observe(bad)
