"""Replica state shared by every request of a gateway: in-flight counts, latency EWMA, circuits.

One interface, two implementations: `MemoryState` (one process) and `RedisState` (every worker
process of a deployment sees the same counts and cooldowns). Times are wall-clock seconds so that
processes on different hosts agree on when a cooldown ends.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import Literal

Circuit = Literal["closed", "open", "half_open"]
EWMA_ALPHA = 0.3  # weight of the newest latency sample


class GatewayState(ABC):
    """Counters and circuit-breaker records per replica (a replica is its base URL)."""

    @abstractmethod
    def acquire(self, replica: str, lease_s: float) -> str:
        """Count one more request in flight on `replica` for at most `lease_s`; return its ticket."""

    @abstractmethod
    def release(self, replica: str, ticket: str) -> None:
        """Count the request of `ticket` as finished."""

    @abstractmethod
    def inflight(self, replicas: list[str]) -> list[int]:
        """Requests in flight per replica."""

    @abstractmethod
    def observe_latency(self, replica: str, seconds: float) -> None:
        """Fold one latency sample into the replica's EWMA."""

    @abstractmethod
    def latencies(self, replicas: list[str]) -> list[float | None]:
        """Latency EWMA per replica (None before the first sample)."""

    @abstractmethod
    def next_index(self, key: str) -> int:
        """A counter shared by all callers (round robin position)."""

    @abstractmethod
    def circuits(self, replicas: list[str], now: float) -> list[Circuit]:
        """Circuit per replica: open while cooling down, half-open once the cooldown is over."""

    @abstractmethod
    def try_probe(self, replica: str, now: float, ttl_s: float) -> bool:
        """Claim the single half-open probe of `replica` (True for exactly one caller per ttl)."""

    @abstractmethod
    def record_success(self, replica: str) -> None:
        """Close the circuit and reset the failure count."""

    @abstractmethod
    def record_failure(self, replica: str, now: float, threshold: int, cooldown_s: float) -> None:
        """Count a failure; open the circuit at `threshold` consecutive failures or a failed probe."""


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else EWMA_ALPHA * sample + (1 - EWMA_ALPHA) * old


class MemoryState(GatewayState):
    """In-process state guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}
        self._ewma: dict[str, float] = {}
        self._counters: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._probe_until: dict[str, float] = {}

    def acquire(self, replica: str, lease_s: float) -> str:
        with self._lock:
            self._inflight[replica] = self._inflight.get(replica, 0) + 1
        return ""

    def release(self, replica: str, ticket: str) -> None:
        with self._lock:
            self._inflight[replica] = max(0, self._inflight.get(replica, 0) - 1)

    def inflight(self, replicas: list[str]) -> list[int]:
        with self._lock:
            return [self._inflight.get(r, 0) for r in replicas]

    def observe_latency(self, replica: str, seconds: float) -> None:
        with self._lock:
            self._ewma[replica] = _ewma(self._ewma.get(replica), seconds)

    def latencies(self, replicas: list[str]) -> list[float | None]:
        with self._lock:
            return [self._ewma.get(r) for r in replicas]

    def next_index(self, key: str) -> int:
        with self._lock:
            value = self._counters.get(key, 0)
            self._counters[key] = value + 1
            return value

    def circuits(self, replicas: list[str], now: float) -> list[Circuit]:
        with self._lock:
            return [_circuit(self._open_until.get(r, 0.0), now) for r in replicas]

    def try_probe(self, replica: str, now: float, ttl_s: float) -> bool:
        with self._lock:
            if self._probe_until.get(replica, 0.0) > now:
                return False
            self._probe_until[replica] = now + ttl_s
            return True

    def record_success(self, replica: str) -> None:
        with self._lock:
            self._failures.pop(replica, None)
            self._open_until.pop(replica, None)
            self._probe_until.pop(replica, None)

    def record_failure(self, replica: str, now: float, threshold: int, cooldown_s: float) -> None:
        with self._lock:
            failures = self._failures.get(replica, 0) + 1
            self._failures[replica] = failures
            if failures >= threshold or replica in self._open_until:
                self._open_until[replica] = now + cooldown_s
                self._probe_until.pop(replica, None)


def _circuit(open_until: float, now: float) -> Circuit:
    if not open_until:
        return "closed"
    return "open" if now < open_until else "half_open"


# KEYS: failures hash, open hash, probe key; ARGV: replica, now, threshold, cooldown
_RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if failures >= tonumber(ARGV[3]) or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], tonumber(ARGV[2]) + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[3])
end
return failures
"""

# KEYS: ewma hash; ARGV: replica, sample, alpha
_OBSERVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = tonumber(ARGV[2])
if old then new = tonumber(ARGV[3]) * new + (1 - tonumber(ARGV[3])) * tonumber(old) end
redis.call('HSET', KEYS[1], ARGV[1], tostring(new))
return tostring(new)
"""


class RedisState(GatewayState):
    """State in Redis hashes under `prefix`, so every worker process shares counts and cooldowns.

    In-flight requests are members of a sorted set scored by their lease expiry, so a request of a
    process that died mid-call stops counting when its lease (the attempt's timeout) runs out.
    Scripts keep failure counting and EWMA updates atomic.
    """

    def __init__(self, client, prefix: str = "sluice:gateway"):
        self.r = client
        self.p = prefix
        self._failure = client.register_script(_RECORD_FAILURE)
        self._observe = client.register_script(_OBSERVE)

    @classmethod
    def from_url(cls, url: str, prefix: str = "sluice:gateway") -> RedisState:
        """Connect to Redis at `url`."""
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=2.0), prefix)

    def _k(self, name: str) -> str:
        return f"{self.p}:{name}"

    def reset(self) -> None:
        """Forget every count, sample and circuit under this prefix."""
        keys = list(self.r.scan_iter(match=f"{self.p}:*"))
        if keys:
            self.r.delete(*keys)

    def acquire(self, replica: str, lease_s: float) -> str:
        ticket, now, key = uuid.uuid4().hex, time.time(), self._k(f"inflight:{replica}")
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now)  # leases of requests whose process died
        pipe.zadd(key, {ticket: now + lease_s})
        pipe.execute()
        return ticket

    def release(self, replica: str, ticket: str) -> None:
        self.r.zrem(self._k(f"inflight:{replica}"), ticket)

    def inflight(self, replicas: list[str]) -> list[int]:
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for replica in replicas:
            pipe.zcount(self._k(f"inflight:{replica}"), now, "+inf")
        return [int(n) for n in pipe.execute()]

    def observe_latency(self, replica: str, seconds: float) -> None:
        self._observe(keys=[self._k("ewma")], args=[replica, repr(seconds), repr(EWMA_ALPHA)])

    def latencies(self, replicas: list[str]) -> list[float | None]:
        return [float(v) if v is not None else None for v in self.r.hmget(self._k("ewma"), replicas)]

    def next_index(self, key: str) -> int:
        return int(self.r.incr(self._k(f"rr:{key}"))) - 1

    def circuits(self, replicas: list[str], now: float) -> list[Circuit]:
        values = self.r.hmget(self._k("open"), replicas)
        return [_circuit(float(v) if v is not None else 0.0, now) for v in values]

    def try_probe(self, replica: str, now: float, ttl_s: float) -> bool:
        return bool(self.r.set(self._k(f"probe:{replica}"), repr(now), nx=True, px=max(1, int(ttl_s * 1000))))

    def record_success(self, replica: str) -> None:
        pipe = self.r.pipeline()
        pipe.hdel(self._k("failures"), replica)
        pipe.hdel(self._k("open"), replica)
        pipe.delete(self._k(f"probe:{replica}"))
        pipe.execute()

    def record_failure(self, replica: str, now: float, threshold: int, cooldown_s: float) -> None:
        keys = [self._k("failures"), self._k("open"), self._k(f"probe:{replica}")]
        self._failure(keys=keys, args=[replica, repr(now), threshold, repr(cooldown_s)])


def make_state(url: str | None, prefix: str = "sluice:gateway") -> GatewayState:
    """Redis-backed state when a URL is given (shared by processes), in-process state otherwise."""
    if not url:
        return MemoryState()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        from sluice.errors import ConfigError

        raise ConfigError(f"routing state URL {url!r} is not a Redis URL: use redis://host:port/db or leave it unset")
    return RedisState.from_url(url, prefix)
