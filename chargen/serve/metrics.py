"""``GET /metrics``: the server's counters in Prometheus's text format (prometheus-client, in the serve extra).

- ``chargen_requests_total{route, status}``: requests answered, by route (the path of a known route, else
  ``other``) and HTTP status;
- ``chargen_generated_characters_total``: characters generated (every choice's, best_of's draws included);
- ``chargen_queue_depth``: rows waiting to join the batch; ``chargen_batch_size``: rows decoding together;
- ``chargen_time_to_first_character_seconds``: from a completion's arrival to its first character drawn
  (a histogram);
- ``chargen_prompt_cache_total{result}``: prompts found in the prompt cache (``hit``) or read (``miss``).

Each app has a registry of its own, so that servers in one process (tests) do not share counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Batcher(Collector):
    """Read from the batcher when scraped: its queue, its batch and its prompt cache."""

    def __init__(self, stats: Callable[[], dict[str, int] | None]):
        self.stats = stats

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        stats = self.stats() or dict(decoding=0, waiting=0, hits=0, misses=0)
        yield GaugeMetricFamily("chargen_queue_depth", "rows waiting to join the batch", value=stats["waiting"])
        yield GaugeMetricFamily("chargen_batch_size", "rows decoding together now", value=stats["decoding"])
        cache = CounterMetricFamily(
            "chargen_prompt_cache", "prompts found in the prompt cache (hit) or read (miss)", labels=["result"]
        )
        cache.add_metric(["hit"], stats["hits"])
        cache.add_metric(["miss"], stats["misses"])
        yield cache


class Metrics:
    """The counters of one server (see the module docstring); ``stats`` reads the batcher's."""

    def __init__(self, stats: Callable[[], dict[str, int] | None]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "chargen_requests", "requests answered, by route and status", ["route", "status"], registry=registry
        )
        self.characters = Counter("chargen_generated_characters", "characters generated", registry=registry)
        self.first = Histogram(
            "chargen_time_to_first_character_seconds",
            "from a completion's arrival to its first character",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        registry.register(_Batcher(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def clock(self) -> Callable[[], None]:
        """A function to call at each character's arrival: the first call is observed, the others do nothing."""
        started, seen = time.monotonic(), [False]

        def first() -> None:
            if not seen[0]:
                seen[0] = True
                self.first.observe(time.monotonic() - started)

        return first
