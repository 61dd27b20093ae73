"""The server's Prometheus metrics (prometheus_client, text exposition format at /metrics)."""

from __future__ import annotations

import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds, from 100 us to 2.5 s: a batched step is a few ms; a queue under overload reaches seconds.
LATENCY = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)


class Telemetry:
    def __init__(self, max_batch: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnkit_requests", "Stream messages and HTTP requests received, by kind.", ["kind"], registry=r
        )
        self.errors = Counter(
            "rnnkit_errors", "Messages and requests refused, by HTTP-style code.", ["code"], registry=r
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, max_batch})
        self.batch_size = Histogram(
            "rnnkit_batch_size", "Streams stepped per batch.", buckets=[s for s in sizes if s <= max_batch], registry=r
        )
        self.queue_delay = BatchHistogram(
            "rnnkit_queue_delay_seconds", "From a chunk's arrival to the start of its batch.", LATENCY, r
        )
        self.step_latency = BatchHistogram(
            "rnnkit_step_latency_seconds", "From a chunk's arrival to its outputs.", LATENCY, r
        )
        self.batch_seconds = Histogram(
            "rnnkit_batch_seconds", "ONNX Runtime time per batch (gather, run, scatter).", buckets=LATENCY, registry=r
        )
        self.stream_steps = Counter("rnnkit_stream_steps", "Steps run for streams.", registry=r)
        self.active_streams = Gauge("rnnkit_active_streams", "Streams open now.", registry=r)
        self.connections = Gauge("rnnkit_websocket_connections", "WebSocket connections open now.", registry=r)
        self.evictions = Counter("rnnkit_evictions", "Streams closed after their idle timeout.", registry=r)
        self.messages = {kind: self.requests.labels(kind) for kind in ("chunk", "reset", "end")}

    def on_batch(self, batch, started: float, seconds: float) -> None:
        now = time.perf_counter()
        self.batch_size.observe(len(batch))
        self.batch_seconds.observe(seconds)
        arrived = np.fromiter((job.arrived for _, job in batch), np.float64, len(batch))
        self.queue_delay.observe(started - arrived)
        self.step_latency.observe(now - arrived)
        self.stream_steps.inc(sum(len(job.chunk) for _, job in batch if job.chunk is not None))  # not ends

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BatchHistogram:
    """A Prometheus histogram fed a whole batch of observations at once (one NumPy call rather
    than a locked update per chunk), exposed through a custom collector."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.array(buckets)
        self.counts = np.zeros(len(buckets) + 1, np.int64)  # the last one is +Inf
        self.sum = 0.0
        self.lock = threading.Lock()
        registry.register(self)

    def observe(self, values: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(self.bounds, values), minlength=len(self.counts))
        with self.lock:
            self.counts += counts
            self.sum += float(values.sum())

    def collect(self):
        with self.lock:
            cumulative, total = np.cumsum(self.counts), self.sum
        family = HistogramMetricFamily(self.name, self.documentation)
        bounds = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        family.add_metric([], list(zip(bounds, cumulative.tolist(), strict=True)), total)
        return [family]
