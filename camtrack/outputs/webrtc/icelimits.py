"""How much ICE work one peer's connectivity checks may cost, and what was refused (for /metrics).

Whoever holds a peer's answer knows its ICE ufrag and password, so signed binding requests
prove only that: from each new source address aioice would learn a peer-reflexive candidate,
pair it, re-sort its check list and start a triggered check (STUN sent back to that address),
without a bound. A browser's checks come from its few signalled candidates and one or two
addresses a NAT maps them to, so each peer's checks may come from at most
`MAX_LEARNED_ADDRESSES` addresses it did not signal (icegate.IceGate); on the shared port, a peer
that already has `udpmux.MAX_ROUTES` addresses gets no new one, and requests from new addresses
are dropped before their signature is even checked (udpmux.UdpMux). What is ignored is counted
here, process-wide, and logged once per peer with the reason. Trickled candidates are bounded
the same way (`MAX_REMOTE_CANDIDATES`): each one is a pair and a sort of the check list.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: addresses a peer's signed checks may come from that it did not signal (peer-reflexive ones)
MAX_LEARNED_ADDRESSES = 8
#: remote candidates a peer may have before it trickles one more (a browser signals a handful, a
#: machine with many interfaces a few tens; an offer's own are bounded by its size)
MAX_REMOTE_CANDIDATES = 64


@dataclass
class IceCheckStats:
    #: signed checks from one more address than a peer may have learned: answered by nobody
    learned: int = 0
    #: STUN requests the shared port dropped: from a new address of a peer that has all its routes
    routes: int = 0
    #: trickled candidates ignored: the peer had MAX_REMOTE_CANDIDATES already
    signalled: int = 0


#: this process's counts (a worker process keeps its own)
STATS = IceCheckStats()
#: what each peer is called in the log line (icegate.IceGate sets it: "websocket viewer 1.2.3.4 of a")
LABELS: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
_told: weakref.WeakSet[object] = weakref.WeakSet()


def ignored(peer: object, reason: str, ufrag: str, count: str) -> None:
    """What `peer` (its aioice Connection) sent was ignored for `reason`; `count` names the
    IceCheckStats counter. The first time for a peer, one log line says so."""
    setattr(STATS, count, getattr(STATS, count) + 1)
    if peer not in _told:
        _told.add(peer)
        logger.warning("ICE limit reached for %s (ICE ufrag %s): %s", LABELS.get(peer, "a peer"), ufrag, reason)
