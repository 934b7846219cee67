"""The service combinations the key end-to-end tests run on, once each.

A test marked `@pytest.mark.stacks` is parametrized over `STACKS` (ids such as
`redis-broker+redis`) through the `stack` fixture; every other test runs on `DEFAULT_STACK`.
Adding a combination is one line here, plus the fixture that starts its services
(`tests/conftest.py`, `broker_url` and `redis_url`), started only when a test needs it.
`-m stacks` runs the marked tests alone; `-k rabbitmq` picks one combination.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stack:
    broker: str
    """`redis` (the default) or `rabbitmq`."""
    store: str
    """The data store: aggregates, scheduler state, beat lock. `redis` or `redis-cluster`
    (3 masters, 3 replicas)."""

    @property
    def id(self) -> str:
        return f"{self.broker}-broker+{self.store}"


DEFAULT_STACK = Stack(broker="redis", store="redis")
STACKS = (
    DEFAULT_STACK,
    Stack(broker="rabbitmq", store="redis"),
    Stack(broker="rabbitmq", store="redis-cluster"),
)
