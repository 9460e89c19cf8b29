"""kombu's SQLAlchemy transport with a shorter poll, for the embedded-Postgres broker.

The stock transport polls every second and passes every transport option to `create_engine`, so
the interval cannot be set as an option; a subclass is the smallest way to change it.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as _SqlaTransport

ALIAS = "sluicepg"
POLL_S = 0.1  # an idle worker issues ~10 small queries/s per queue; a query waits ≤ 100 ms to be seen


class Transport(_SqlaTransport):
    polling_interval = POLL_S


def register() -> None:
    """Make `sluicepg+postgresql+psycopg://…` broker URLs resolve to this transport."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
