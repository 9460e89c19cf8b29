"""Load balancers: pick one replica of a tier among the healthy candidates (one class, one registration each)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sluice.config import TierConfig
from sluice.registry import Registry
from tasks.llm.state import GatewayState


class Balancer(ABC):
    """One strategy for spreading a tier's requests over its replicas (`tiers.<name>.balancer`)."""

    def __init__(self, config: TierConfig):
        self.config = config

    @abstractmethod
    def choose(self, tier: str, candidates: list[str], state: GatewayState) -> str:
        """Return one of `candidates` (never empty)."""


def _rotated_argmin(tier: str, candidates: list[str], scores: list[float], state: GatewayState) -> str:
    # Ties (e.g. an idle tier) rotate instead of always hitting the first replica.
    start = state.next_index(tier) % len(candidates)
    order = candidates[start:] + candidates[:start]
    ranked = scores[start:] + scores[:start]
    return order[min(range(len(order)), key=ranked.__getitem__)]


BALANCERS: Registry[type[Balancer]] = Registry("balancer", key="balancer")


@BALANCERS.register("round_robin")
class RoundRobin(Balancer):
    """Each replica in turn."""

    def choose(self, tier: str, candidates: list[str], state: GatewayState) -> str:
        return candidates[state.next_index(tier) % len(candidates)]


@BALANCERS.register("least_outstanding")
class LeastOutstanding(Balancer):
    """Fewest requests in flight (least connections)."""

    def choose(self, tier: str, candidates: list[str], state: GatewayState) -> str:
        return _rotated_argmin(tier, candidates, [float(n) for n in state.inflight(candidates)], state)


@BALANCERS.register("latency_ewma")
class LatencyEWMA(Balancer):
    """Lowest expected wait: latency EWMA × (in flight + 1), with slow outliers ejected.

    A replica whose EWMA is more than OUTLIER_FACTOR times the
    fastest one's gets only one request in EXPLORE_EVERY (so its EWMA can recover): a healthy but
    slow replica would otherwise still take a few percent of requests, and those set the p99.
    """

    OUTLIER_FACTOR = 3.0
    EXPLORE_EVERY = 100

    def choose(self, tier: str, candidates: list[str], state: GatewayState) -> str:
        latencies = state.latencies(candidates)
        inflight = state.inflight(candidates)
        sampled = [lat for lat in latencies if lat is not None]
        if sampled and state.next_index(f"{tier}:explore") % self.EXPLORE_EVERY:
            limit = self.OUTLIER_FACTOR * min(sampled)
            keep = [i for i, lat in enumerate(latencies) if lat is None or lat <= limit]
            candidates = [candidates[i] for i in keep]
            latencies = [latencies[i] for i in keep]
            inflight = [inflight[i] for i in keep]
        # An unsampled replica is assumed as fast as the fastest (optimistic, so it gets tried), but its
        # in-flight count still counts: a cold replica is not flooded before its first answer returns.
        prior = min((lat for lat in latencies if lat is not None), default=1.0)
        scores = [(prior if lat is None else lat) * (n + 1) for lat, n in zip(latencies, inflight, strict=True)]
        return _rotated_argmin(tier, candidates, scores, state)
