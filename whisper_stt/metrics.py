"""Prometheus metrics for one app: its own registry, an HTTP middleware and live engine/connection figures.

Each app gets its own :class:`CollectorRegistry` (never prometheus_client's global one), so several apps
can live in one process (the tests do this) without "duplicated timeseries" errors.

Two kinds of figures:
- counted per HTTP request by :class:`MetricsMiddleware`: requests and errors by route and status,
  request duration, and, for requests that transcribed a file (the route left ``audio_seconds`` and
  ``processing_time`` on ``request.state``), processing time and real-time factor histograms;
- read live at scrape time by :class:`_LiveCollector` from the engine and the connection stats: open
  WebSockets, active / queued transcriptions, totals of audio and model seconds, the real-time lane's
  scheduler (when the engine has one), model and device.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Scope

from .access_log import ObservingMiddleware
from .engine import Engine
from .stats import ServerStats

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"  # one label for every unknown path, so scanners cannot blow up cardinality

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_PROCESSING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
_AUDIO_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _LiveCollector(Collector):
    """Figures that already live on the engine and the connection stats, read at each scrape."""

    def __init__(self, engine: Engine, stats: ServerStats) -> None:
        self.engine = engine
        self.stats = stats
        self.jobs = None  # the app's JobService (queue figures), set by create_app

    def collect(self) -> Iterable[Metric]:
        e, s = self.engine, self.stats
        yield GaugeMetricFamily(
            "whisper_websocket_connections_active", "Open /ws/transcribe connections.",
            value=len(s.connections),
        )
        yield GaugeMetricFamily(
            "whisper_websocket_connections_pending_auth",
            "Open /ws/transcribe connections still waiting for their API key.", value=s.pending,
        )
        yield GaugeMetricFamily(
            "whisper_websocket_connections_max", "Configured WebSocket connection limit.",
            value=s.max_connections,
        )
        yield CounterMetricFamily(
            "whisper_websocket_connections_accepted", "WebSocket connections accepted since start.",
            value=s.total_connections,
        )
        yield GaugeMetricFamily(
            "whisper_transcriptions_active", "Model calls running now.", value=e.active
        )
        yield GaugeMetricFamily(
            "whisper_transcriptions_queued", "Model calls waiting for a free slot.", value=e.queued
        )
        yield GaugeMetricFamily(
            "whisper_transcriptions_max_concurrent", "Model calls allowed at once.", value=e.max_concurrent
        )
        yield CounterMetricFamily(
            "whisper_transcriptions_completed",
            "Transcriptions completed by the engine's pool (the real-time lane: whisper_stream_lane_*).",
            value=e.completed,
        )
        yield CounterMetricFamily(
            "whisper_audio_processed_seconds", "Seconds of audio in the completed transcriptions.",
            value=e.audio_seconds,
        )
        yield CounterMetricFamily(
            "whisper_model_processing_seconds", "Seconds spent in the completed transcriptions' model calls.",
            value=e.processing_seconds,
        )
        yield GaugeMetricFamily(
            "whisper_start_time_seconds", "When the server started (Unix time).", value=s.started_at
        )
        yield from self._stream_lane()
        yield from self._jobs()
        yield InfoMetricFamily(
            "whisper_model",
            "The loaded model and where it runs.",
            value={
                "model": str(e.model_name),
                "device": str(e.device),
                "compute_type": str(e.compute_type),
            },
        )


    def _jobs(self) -> Iterable[Metric]:
        """POST /v1/jobs: the queue as last read from the job store (every few seconds: scrapes are
        synchronous, the store is not), shared by every replica using the same store."""
        if self.jobs is None:
            return
        c = self.jobs.counts
        yield GaugeMetricFamily("whisper_jobs_queued", "Jobs waiting in the queue.", value=c.queued)
        yield GaugeMetricFamily("whisper_jobs_running", "Jobs being transcribed by a worker.", value=c.running)
        yield GaugeMetricFamily("whisper_jobs_oldest_queued_age_seconds",
                                "How long the oldest queued job has waited (0: none waiting).",
                                value=c.oldest_queued_age_s)
        yield GaugeMetricFamily("whisper_jobs_webhooks_pending",
                                "Ended jobs whose webhook is owed (being sent or waiting to retry).",
                                value=c.webhooks_pending)
        ended = CounterMetricFamily("whisper_jobs_ended", "Jobs ended since the store was created, by status.",
                                    labels=["status"])
        ended.add_metric(["succeeded"], c.succeeded_total)
        ended.add_metric(["failed"], c.failed_total)
        ended.add_metric(["cancelled"], c.cancelled_total)
        yield ended

    def _stream_lane(self) -> Iterable[Metric]:
        """The real-time (WebSocket) lane's scheduler, when the engine has one; absent figures are skipped."""
        streams = getattr(self.engine, "streams", None)
        if streams is None or not hasattr(streams, "snapshot"):
            return
        snap = streams.snapshot()
        pending = GaugeMetricFamily(
            "whisper_stream_lane_pending", "Real-time jobs waiting, by kind.", labels=["kind"]
        )
        done = CounterMetricFamily(
            "whisper_stream_lane_jobs_completed", "Real-time jobs done, by kind.", labels=["kind"]
        )
        for kind in ("final", "partial"):
            if snap.get(f"pending_{kind}s") is not None:
                pending.add_metric([kind], snap[f"pending_{kind}s"])
            if snap.get(f"{kind}s_done") is not None:
                done.add_metric([kind], snap[f"{kind}s_done"])
        yield pending
        yield done
        simple = [
            ("running", GaugeMetricFamily, "whisper_stream_lane_running", "Real-time jobs in the running batch."),
            ("oldest_wait_s", GaugeMetricFamily, "whisper_stream_lane_oldest_wait_seconds",
             "How long the oldest waiting real-time job has waited (the lane's lag)."),
            ("partials_superseded", CounterMetricFamily, "whisper_stream_lane_partials_superseded",
             "Partials dropped because a newer one for the same session replaced them."),
            ("busy_seconds", CounterMetricFamily, "whisper_stream_lane_busy_seconds",
             "Seconds the real-time lane's model worker has been busy."),
        ]
        for key, family, name, doc in simple:
            if snap.get(key) is not None:
                yield family(name, doc, value=snap[key])


class Metrics:
    """The registry of one app and the instruments the middleware updates."""

    def __init__(self, engine: Engine, stats: ServerStats, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "whisper_http_requests", "HTTP requests by method, route and status.",
            ["method", "route", "status"], registry=r,
        )
        self.errors = Counter(
            "whisper_http_errors", "HTTP responses with a 4xx/5xx status, by method, route and status.",
            ["method", "route", "status"], registry=r,
        )
        self.latency = Histogram(
            "whisper_http_request_duration_seconds", "Time from request to the end of the response.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.processing = Histogram(
            "whisper_transcription_processing_seconds",
            "Model time per transcribed HTTP upload, by route.",
            ["route"], buckets=_PROCESSING_BUCKETS, registry=r,
        )
        self.real_time_factor = Histogram(
            "whisper_transcription_real_time_factor",
            "Model time / audio duration per transcribed HTTP upload (below 1: faster than real time).",
            ["route"], buckets=_RTF_BUCKETS, registry=r,
        )
        self.audio = Histogram(
            "whisper_transcription_audio_seconds", "Audio duration per transcribed HTTP upload.",
            ["route"], buckets=_AUDIO_BUCKETS, registry=r,
        )
        self.live = _LiveCollector(engine, stats)
        r.register(self.live)
        if process_metrics:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes ...

    def observe_request(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        state = scope.get("state") or {}
        audio, processing = state.get("audio_seconds"), state.get("processing_time")
        if status < 400 and audio and processing is not None:
            self.processing.labels(route).observe(processing)
            self.audio.labels(route).observe(audio)
            self.real_time_factor.labels(route).observe(processing / audio)


class MetricsMiddleware(ObservingMiddleware):
    """Counts every HTTP request once its response is finished (streamed bodies included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, prerouted_paths: Iterable[str] = ()) -> None:
        """``prerouted_paths``: paths that may be answered before routing (the body-size limit's 413),
        labelled as themselves although no route was matched."""
        super().__init__(app)
        self.metrics = metrics
        self.prerouted_paths = frozenset(prerouted_paths)

    def route_label(self, scope: Scope) -> str:
        """The route template (``/admin/keys/{key}``), never the raw path, so labels stay bounded."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        if scope["path"] in self.prerouted_paths:
            return scope["path"]
        return UNMATCHED_ROUTE

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        self.metrics.observe_request(scope, self.route_label(scope), status, seconds)
