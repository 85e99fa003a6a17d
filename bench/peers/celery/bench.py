"""Celery (Redis broker and result backend) peer of the lts-rs benchmark suite.

python bench.py --workload w1|w2|w3|w4 --jobs N --rate R --seconds S --redis-url URL

The producer runs here; the worker is a `celery worker` subprocess. Prints
one JSON object as its last stdout line; see bench/README.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

BATCH = 1000
BATCH_IN_FLIGHT = 4
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=["w1", "w2", "w3", "w4"])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--redis-url", required=True, help="redis://127.0.0.1:PORT (no database)")
    p.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo", "gevent"])
    p.add_argument("--concurrency", type=int, default=4, help="per worker process")
    p.add_argument("--workers", type=int, default=2, help="celery worker processes")
    p.add_argument("--in-flight", type=int, default=8, help="producer threads for single sends")
    return p.parse_args()


ARGS = parse_args()
os.environ["BENCH_REDIS_URL"] = ARGS.redis_url.rstrip("/")
os.environ["BENCH_PRODUCER"] = "1"
sys.path.insert(0, HERE)

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402
from celery import group  # noqa: E402

from tasks import FIRST_START_KEY, LATENCY_KEY, app, noop  # noqa: E402

BROKER = redis.Redis.from_url(f"{os.environ['BENCH_REDIS_URL']}/0")
RESULTS = redis.Redis.from_url(f"{os.environ['BENCH_REDIS_URL']}/1")
LATENCIES = redis.Redis.from_url(f"{os.environ['BENCH_REDIS_URL']}/2")
IDLE_QUEUE = "bench-idle"


class Workers:
    """`celery worker` subprocesses, consuming only an idle queue until
    `consume()` points them at the benchmark queue (or, for W3, on the
    benchmark queue from the start). Each worker's consumer
    loop handles one message at a time (fetch, unacked bookkeeping, ack),
    so more worker processes drain faster than more threads in one."""

    def __init__(self, queue=IDLE_QUEUE):
        self.names = [f"bench-{os.getpid()}-{i}@localhost" for i in range(ARGS.workers)]
        env = dict(os.environ, BENCH_PRODUCER="0")
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "tasks", "worker",
                    f"--pool={ARGS.pool}", f"--concurrency={ARGS.concurrency}",
                    "-Q", queue, "--loglevel=WARNING",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", name,
                ],
                cwd=HERE, env=env, stdout=sys.stderr, stderr=sys.stderr,
            )
            for name in self.names
        ]
        deadline = time.monotonic() + 60
        waiting = set(self.names)
        while waiting:
            for reply in app.control.ping(destination=list(waiting), timeout=0.2):
                waiting -= set(reply)
            for proc in self.procs:
                if proc.poll() is not None:
                    self.stop()
                    sys.exit(f"celery peer: a worker exited with {proc.returncode}")
            if waiting and time.monotonic() > deadline:
                self.stop()
                sys.exit(f"celery peer: no ping answer from {sorted(waiting)} within 60 s")

    def consume(self):
        replies = app.control.add_consumer(
            "bench", destination=self.names, reply=True, timeout=10
        )
        if len(replies) != len(self.names):
            self.stop()
            sys.exit("celery peer: not every worker confirmed add_consumer")

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def send_single(n, in_flight):
    """`apply_async`, one task per call, from `in_flight` threads."""
    counter = iter(range(n))
    lock = threading.Lock()

    def loop():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            noop.apply_async(args=(time.time(),))

    threads = [threading.Thread(target=loop) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def send_batched(n):
    """A `group` of BATCH signatures per `apply_async`, BATCH_IN_FLIGHT
    groups at a time."""

    def one(size):
        t = time.time()
        group(noop.s(t) for _ in range(size)).apply_async()

    sizes = [min(BATCH, n - start) for start in range(0, n, BATCH)]
    with ThreadPoolExecutor(BATCH_IN_FLIGHT) as pool:
        list(pool.map(one, sizes))


def until_recorded(n, limit_s):
    """Until `n` results are in the result backend (database 1); returns
    the wall-clock time it saw them."""
    deadline = time.monotonic() + limit_s
    while RESULTS.dbsize() < n:
        if time.monotonic() > deadline:
            sys.exit(f"celery peer: only {RESULTS.dbsize()} of {n} results recorded in time")
        time.sleep(0.005)
    return time.time()


def drain(n, limit_s):
    """Seconds from the first task's start to the last result recorded."""
    workers = Workers()
    try:
        workers.consume()
        end = until_recorded(n, limit_s)
    finally:
        workers.stop()
    first = LATENCIES.zrange(FIRST_START_KEY, 0, 0, withscores=True)
    return end - first[0][1]


def percentile(sorted_samples, p):
    if not sorted_samples:
        return None
    rank = math.ceil(p / 100 * len(sorted_samples))
    return sorted_samples[min(max(rank, 1), len(sorted_samples)) - 1]


def redis_server_stats():
    pid = BROKER.info("server")["process_id"]
    data_dir = BROKER.config_get("dir")["dir"]
    rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    size = 0
    for root, _, files in os.walk(data_dir):
        for name in files:
            try:
                size += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return rss, size / (1024 * 1024)


def w1():
    n = ARGS.jobs
    t = time.perf_counter()
    send_single(n, ARGS.in_flight)
    single = n / (time.perf_counter() - t)
    BROKER.flushdb()
    t = time.perf_counter()
    send_batched(n)
    batched = n / (time.perf_counter() - t)
    return {"jobs": n, "single_jobs_per_s": single, "batched_jobs_per_s": batched,
            "batch": BATCH, "in_flight": ARGS.in_flight}


def w2():
    n = ARGS.jobs
    send_batched(n)
    s = drain(n, 3600)
    return {"jobs": n, "seconds": s, "jobs_per_s": n / s}


def w3():
    n = round(ARGS.rate * ARGS.seconds)
    worker = Workers(queue="bench")
    try:
        start = time.monotonic()
        # Sends go to a pool of threads so a slow send (an fsync) does not
        # hold back the next; each is scheduled by its target time.
        with ThreadPoolExecutor(16) as pool:
            futures = []
            for i in range(n):
                wait = start + i / ARGS.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                futures.append(pool.submit(
                    lambda: noop.apply_async(kwargs={"enqueued_at": time.time(), "record": True})))
            for f in futures:
                f.result()
        until_recorded(n, 600)
    finally:
        worker.stop()
    samples = sorted(float(x) for x in LATENCIES.lrange(LATENCY_KEY, 0, -1))
    return {"jobs": n, "rate": ARGS.rate, "seconds": ARGS.seconds,
            "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": samples[-1] if samples else None, "samples_ms": samples}


def w4():
    n = ARGS.jobs
    t = time.perf_counter()
    send_batched(n)
    submit = n / (time.perf_counter() - t)
    _, disk = redis_server_stats()
    drain_rate = n / drain(n, 7200)
    rss, _ = redis_server_stats()
    return {"jobs": n, "submit_jobs_per_s": submit, "drain_jobs_per_s": drain_rate,
            "rss_mib": rss, "disk_mib": disk}


def main():
    results = {"w1": w1, "w2": w2, "w3": w3, "w4": w4}[ARGS.workload]()
    cfg = BROKER.config_get("append*")
    server = BROKER.info("server")
    print(json.dumps({
        "system": "celery",
        "version": f"celery {celery.__version__}, kombu {kombu.__version__}, "
                   f"redis-py {redis.__version__}, Python {sys.version.split()[0]}, "
                   f"Redis {server['redis_version']}",
        "workload": ARGS.workload,
        "durability": f"Redis appendonly {cfg.get('appendonly')}, appendfsync "
                      f"{cfg.get('appendfsync')}; broker and result backend both Redis; "
                      "a result is stored when its task returns",
        "results": results,
        "notes": f"workers: {ARGS.workers} celery worker subprocesses, each --pool={ARGS.pool} "
                 f"--concurrency={ARGS.concurrency}, prefetch multiplier "
                 f"{app.conf.worker_prefetch_multiplier}, acks early (Celery default). "
                 f"single = apply_async, one task per call, {ARGS.in_flight} sending threads; "
                 f"batched = group of {BATCH} signatures .apply_async() (one message per task, "
                 f"Celery has no bulk publish), {BATCH_IN_FLIGHT} groups in flight; "
                 "done = result stored in the Redis result backend by the worker "
                 "(W2/W4 timed from the first task's start to the last result) "
                 "(the producer has no result backend, so it does not subscribe to results). "
                 "W4 RSS = redis-server VmHWM, disk = Redis data dir after the submit.",
    }))


if __name__ == "__main__":
    main()
