"""The Celery app and its one no-op task, for bench.py.

Broker: Redis database 0. Result backend: Redis database 1, so that the
number of keys there is the number of completions recorded. W3 latencies
go to a list in database 2.
"""

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LATENCY_KEY = "bench:latency_ms"
FIRST_START_KEY = "bench:first_start"

# The worker stores results. The producer (bench.py) sets BENCH_PRODUCER=1
# and has no result backend, as a producer that does not wait on results
# is configured: with one, every apply_async also subscribes to the task's
# result channel, which halved the send rate here.
BACKEND = None if os.environ.get("BENCH_PRODUCER") == "1" else f"{REDIS_URL}/1"

app = Celery("lts_bench", broker=f"{REDIS_URL}/0", backend=BACKEND)
app.conf.update(
    task_default_queue="bench",
    # A completion is recorded in the backend as soon as the task returns.
    task_ignore_result=False,
    result_expires=None,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "16")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


_latency_db = None


def _latencies():
    global _latency_db
    if _latency_db is None:
        _latency_db = redis.Redis.from_url(f"{REDIS_URL}/2")
    return _latency_db


_first_seen = False


@app.task(name="noop")
def noop(enqueued_at=None, record=False):
    """Does nothing. In W3 it records how long after its enqueue it started;
    otherwise the first task each worker process runs notes the time, so a
    drain is timed from the first start (not from the worker's queue
    subscription, which the Redis transport picks up within its 1 s BRPOP)."""
    global _first_seen
    started = time.time()
    if record:
        _latencies().rpush(LATENCY_KEY, (started - enqueued_at) * 1000.0)
    elif not _first_seen:
        _first_seen = True
        _latencies().zadd(FIRST_START_KEY, {str(started): started})
    return None
