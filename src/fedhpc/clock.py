"""Time: the one model of what a client's round costs on the simulated clock.

Both the trainer (which stamps each Update with its simulated completion
time) and the adaptive selector (which estimates the time of clients it has
not measured yet) call :func:`client_round_seconds`, so the two can never
disagree about what a round costs.

A client's round is local training plus two messages over its link: the
global model down and the encoded update up. Each message costs the link's
one-way latency plus its bytes at the link's bandwidth::

    seconds = compute / speed
              + (latency + 8 * down_bytes / bandwidth)     # the model, down
              + (latency + 8 * up_bytes / bandwidth)       # the update, up

``compute`` is the training time on the reference host (``speed`` = 1);
``latency_ms`` is one-way (registration measures it as half a round trip).
"""

from __future__ import annotations

from fedhpc.types import ClientProfile


def client_round_seconds(profile: ClientProfile, compute_s: float, down_bytes: int, up_bytes: int) -> float:
    """Seconds of one client's round: ``compute_s`` (reference-host seconds of its
    local training) scaled by its speed, plus the model down and the update up
    over its link (see the module docstring). A non-positive speed or bandwidth
    (nothing measured) counts as the slowest possible host, not as an error."""
    compute = compute_s / max(profile.speed, 1e-9)
    transfer = (down_bytes + up_bytes) * 8 / (max(profile.bandwidth_mbps, 1e-9) * 1e6)
    return compute + transfer + 2 * profile.latency_ms / 1000
