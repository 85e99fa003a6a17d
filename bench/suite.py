"""Driver of the benchmark suite (bench/run calls it with bench/.venv).

Runs every workload on every system, one adapter subprocess each, with a
fresh Redis (for the Redis-based peers) or a fresh data file per run. Each
adapter prints one JSON object as its last stdout line (the contract in
bench/README.md). Writes OUT/results.json, prints the table and the ratios
of ours to each peer, and draws OUT/throughput.png and OUT/latency.png.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
OURS = "lts-embedded"
SYSTEMS = [OURS, "bullmq", "celery", "apalis"]
WORKLOADS = ["w1", "w2", "w3", "w4"]
REDIS_DURABILITY = "Redis appendonly yes, appendfsync always (every write fsynced before its reply)"

SIZES = {
    "full": {"w1": 50_000, "w2": 50_000, "w3": (500, 10), "w4": 1_000_000},
    "smoke": {"w1": 500, "w2": 500, "w3": (100, 1), "w4": 2_000},
}
# W4 sizes below the full million, per system, where the million would not
# finish in a sitting: Celery drains about 200 jobs/s here, so 1,000,000
# would take about 1 h 45 min. The table and results.json name the size run.
W4_CAPS = {"full": {"celery": 100_000}, "smoke": {}}
# Seconds one adapter run may take before it is killed and counted failed.
TIMEOUTS = {
    "full": {"w1": 1800, "w2": 1800, "w3": 600, "w4": 4 * 3600},
    "smoke": {"w1": 120, "w2": 120, "w3": 120, "w4": 120},
}

COLUMNS = [
    # (header, workload, key in results, kind)
    ("W1 single/s", "w1", "single_jobs_per_s", "rate"),
    ("W1 batch/s", "w1", "batched_jobs_per_s", "rate"),
    ("W2 jobs/s", "w2", "jobs_per_s", "rate"),
    ("W3 p50 ms", "w3", "p50_ms", "latency"),
    ("W3 p99 ms", "w3", "p99_ms", "latency"),
    ("W4 submit/s", "w4", "submit_jobs_per_s", "rate"),
    ("W4 drain/s", "w4", "drain_jobs_per_s", "rate"),
    ("W4 RSS MiB", "w4", "rss_mib", "size"),
    ("W4 disk MiB", "w4", "disk_mib", "size"),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it works")
    p.add_argument("--out", default=os.path.join(BENCH, "out"))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--lts-bin", default=os.path.join(ROOT, "target/release/examples/suite"))
    p.add_argument("--apalis-bin",
                   default=os.path.join(BENCH, "peers/apalis/target/release/lts-bench-apalis"))
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="a subset of w1,w2,w3,w4 (a full W4 of Celery alone takes hours)")
    p.add_argument("--pid-file", help="append the pid of every server started here")
    args = p.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; known: {SYSTEMS}")
    args.workloads = [w for w in args.workloads.split(",") if w]
    if not args.workloads or set(args.workloads) - set(WORKLOADS):
        p.error(f"--workloads: a subset of {WORKLOADS}")
    return args


# Every process group this driver started and has not reaped yet, so that
# an interrupted run (bench/run's trap sends SIGTERM) leaves nothing behind.
LIVE = set()


def on_terminate(signum, _frame):
    for proc in list(LIVE):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of our own on a free loopback port, data in `dir`,
    every write fsynced before its reply."""

    def __init__(self, data_dir, log_path, pid_file):
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", data_dir, "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "yes", "--daemonize", "no"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.add(self.proc)
        if pid_file:
            with open(pid_file, "a") as f:
                f.write(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 20
        while True:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                  capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PONG on port {self.port}")
            time.sleep(0.02)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        LIVE.discard(self.proc)
        self.log.close()


def workload_args(workload, sizes):
    if workload == "w3":
        rate, seconds = sizes["w3"]
        return ["--jobs", str(rate * seconds), "--rate", str(rate), "--seconds", str(seconds)]
    return ["--jobs", str(sizes[workload]), "--rate", "500", "--seconds", "10"]


def command(system, args, workload, sizes, data_dir, redis):
    common = ["--workload", workload] + workload_args(workload, sizes)
    if system == OURS:
        return [args.lts_bin] + common
    if system == "bullmq":
        return ["node", os.path.join(BENCH, "peers/bullmq/bench.mjs")] + common + [
            "--redis-url", redis.url]
    if system == "celery":
        return [sys.executable, os.path.join(BENCH, "peers/celery/bench.py")] + common + [
            "--redis-url", redis.url]
    return [args.apalis_bin] + common + ["--sqlite", os.path.join(data_dir, "apalis.sqlite")]


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_one(system, workload, args, mode, logs):
    """Runs one adapter; returns its JSON object, or {"error": ...}."""
    sizes = dict(SIZES[mode])
    if system in W4_CAPS[mode]:
        sizes["w4"] = W4_CAPS[mode][system]
    log_path = os.path.join(logs, f"{system}-{workload}.log")
    data_dir = tempfile.mkdtemp(prefix=f"lts-bench-{system}-{workload}-")
    redis = None
    proc = None
    try:
        if system == OURS and not os.access(args.lts_bin, os.X_OK):
            build_log = os.path.join(logs, "build-lts-embedded.log")
            return {"error": f"{args.lts_bin} is not built",
                    "stderr_tail": tail(build_log) or "(no build log)"}
        if system in ("bullmq", "celery"):
            redis = Redis(data_dir, os.path.join(logs, f"{system}-{workload}-redis.log"),
                          args.pid_file)
        cmd = command(system, args, workload, sizes, data_dir, redis)
        env = dict(os.environ, TMPDIR=data_dir)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            started = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                    cwd=ROOT, start_new_session=True)
            LIVE.add(proc)
            try:
                stdout, _ = proc.communicate(timeout=TIMEOUTS[mode][workload])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return {"error": f"timed out after {TIMEOUTS[mode][workload]} s",
                        "stderr_tail": tail(log_path)}
            elapsed = time.monotonic() - started
        lines = [l for l in stdout.decode(errors="replace").splitlines() if l.strip()]
        if proc.returncode != 0 or not lines:
            return {"error": f"exit status {proc.returncode}", "stderr_tail": tail(log_path)}
        try:
            obj = json.loads(lines[-1])
        except json.JSONDecodeError:
            return {"error": "last stdout line is not JSON", "stdout_tail": "\n".join(lines[-5:]),
                    "stderr_tail": tail(log_path)}
        missing = [key for (_, w, key, _) in COLUMNS if w == workload
                   and not isinstance(obj.get("results", {}).get(key), (int, float))]
        if missing:
            return {"error": f"results lack {missing}", "stderr_tail": tail(log_path)}
        obj["wall_seconds"] = elapsed
        return obj
    except Exception as e:  # a failed system is reported, the suite goes on
        return {"error": f"{type(e).__name__}: {e}", "stderr_tail": tail(log_path)}
    finally:
        if proc is not None:
            # The adapter's own children (Celery workers) share its group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            LIVE.discard(proc)
        if redis is not None:
            redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def machine_info():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
            mem_gib = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    os_name = ""
    try:
        with open("/etc/os-release") as f:
            os_name = next((l.split("=", 1)[1].strip().strip('"') for l in f
                            if l.startswith("PRETTY_NAME=")), "")
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib,
            "kernel": platform.release(), "os": os_name,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "load_average_at_start": os.getloadavg(),
            "lts_build_profile": os.environ.get("LTS_BENCH_PROFILE", "release")}


def value(results, system, workload, key):
    obj = results.get(system, {}).get(workload, {})
    v = obj.get("results", {}).get(key) if "error" not in obj else None
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "latency":
        return f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    if kind == "size":
        return f"{v:,.1f}"
    return f"{v:,.0f}"


def print_table(results, systems):
    width = max(len(s) for s in systems + ["system"]) + 2
    cols = [max(len(h), 9) + 2 for (h, _, _, _) in COLUMNS]
    head = "system".ljust(width) + "".join(h.rjust(c) for (h, _, _, _), c in zip(COLUMNS, cols))
    print(head)
    print("-" * len(head))
    for system in systems:
        row = system.ljust(width)
        for (header, workload, key, kind), c in zip(COLUMNS, cols):
            obj = results[system].get(workload, {})
            cell = "FAILED" if "error" in obj else fmt(value(results, system, workload, key), kind)
            row += cell.rjust(c)
        print(row)


def print_ratios(results, systems):
    peers = [s for s in systems if s != OURS]
    if OURS not in systems or not peers:
        return
    print(f"\n{OURS} against each peer (> 1 means ours is better: "
          "throughput ours/peer, latency peer/ours)")
    ratio_cols = [c for c in COLUMNS if c[3] != "size"]
    width = max(len(s) for s in peers + ["peer"]) + 2
    cols = [max(len(h), 9) + 2 for (h, _, _, _) in ratio_cols]
    head = "peer".ljust(width) + "".join(h.rjust(c) for (h, _, _, _), c in zip(ratio_cols, cols))
    print(head)
    print("-" * len(head))
    for peer in peers:
        row = peer.ljust(width)
        for (header, workload, key, kind), c in zip(ratio_cols, cols):
            ours = value(results, OURS, workload, key)
            theirs = value(results, peer, workload, key)
            r = ratio(ours, theirs, kind)
            row += ("-" if r is None else f"{r:.2f}x").rjust(c)
        print(row)


def ratio(ours, theirs, kind):
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if kind == "rate" else theirs / ours


def goals(results, systems):
    """The issue's goals: a list of (statement, holds: True/False/None, detail)."""
    peers = [s for s in systems if s != OURS]
    out = []
    ours_w2 = value(results, OURS, "w2", "jobs_per_s")
    peer_w2 = [v for v in (value(results, p, "w2", "jobs_per_s") for p in peers) if v]
    if ours_w2 and peer_w2:
        best = max(peer_w2)
        out.append(("W2 drain: ours >= 2x the best peer", ours_w2 >= 2 * best,
                    f"ours {ours_w2:,.0f}/s, best peer {best:,.0f}/s: {ours_w2 / best:.2f}x"))
    else:
        out.append(("W2 drain: ours >= 2x the best peer", None, "no figures"))
    ours_p99 = value(results, OURS, "w3", "p99_ms")
    peer_p99 = [v for v in (value(results, p, "w3", "p99_ms") for p in peers) if v]
    if ours_p99 and peer_p99:
        best = min(peer_p99)
        out.append(("W3 p99: ours >= 2x better than the best peer", best >= 2 * ours_p99,
                    f"ours {ours_p99:.1f} ms, best peer {best:.1f} ms: {best / ours_p99:.2f}x"))
    else:
        out.append(("W3 p99: ours >= 2x better than the best peer", None, "no figures"))
    w4_drain = value(results, OURS, "w4", "drain_jobs_per_s")
    if ours_w2 and w4_drain:
        drop = 1 - w4_drain / ours_w2
        out.append(("W4 drain: ours drops <= 20% against W2", drop <= 0.20,
                    f"W2 {ours_w2:,.0f}/s, W4 {w4_drain:,.0f}/s: "
                    + (f"{drop * 100:.0f}% lower" if drop > 0 else f"{-drop * 100:.0f}% higher")))
    else:
        out.append(("W4 drain: ours drops <= 20% against W2", None, "no figures"))
    return out


def print_ours_costs(results):
    lines = []
    for workload in WORKLOADS:
        obj = results.get(OURS, {}).get(workload, {})
        r = obj.get("results", {}) if "error" not in obj else {}
        parts = []
        if isinstance(r.get("cpu_us_per_job"), dict):
            parts.append("CPU us/job " + ", ".join(
                f"{k} {v:,.0f}" for k, v in r["cpu_us_per_job"].items() if isinstance(v, (int, float))))
        if isinstance(r.get("peak_rss_mib"), dict):
            parts.append("peak RSS MiB " + ", ".join(
                f"{k} {v:,.0f}" for k, v in r["peak_rss_mib"].items() if isinstance(v, (int, float))))
        if parts:
            lines.append(f"  {workload}: " + "; ".join(parts))
    if lines:
        print(f"\n{OURS} costs:")
        print("\n".join(lines))


def draw(results, systems, out, w3_size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [s for s in systems if any("error" not in results[s].get(w, {"error": 1})
                                    for w in WORKLOADS)]
    bars = [c for c in COLUMNS if c[3] == "rate"]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / max(len(ok), 1)
    any_bar = False
    for i, system in enumerate(ok):
        xs, ys = [], []
        for j, (header, workload, key, _) in enumerate(bars):
            v = value(results, system, workload, key)
            if v:
                xs.append(j + (i - (len(ok) - 1) / 2) * width)
                ys.append(v)
        any_bar = any_bar or bool(ys)
        rects = ax.bar(xs, ys, width, label=system)
        ax.bar_label(rects, labels=[f"{y:,.0f}" for y in ys], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(bars)), [h.replace("/s", "") for (h, _, _, _) in bars])
    if any_bar:
        ax.set_yscale("log")
    ax.set_ylabel("jobs per second (log scale)")
    ax.set_title("Throughput, higher is better")
    if ok:
        ax.legend(loc="upper center", ncol=len(ok))
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 6))
    drawn = False
    for system in ok:
        obj = results[system].get("w3", {})
        samples = obj.get("results", {}).get("samples_ms") if "error" not in obj else None
        if not samples:
            continue
        xs = sorted(max(float(s), 1e-3) for s in samples)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        r = obj["results"]
        ax.step(xs, ys, where="post",
                label=f"{system} (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms)")
        drawn = True
    ax.set_xscale("log")
    ax.set_xlabel("enqueue to start, ms (log scale)")
    ax.set_ylabel("fraction of jobs")
    rate, seconds = w3_size
    ax.set_title(f"W3 latency at a steady {rate}/s for {seconds} s (CDF), left is better")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    if drawn:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=110)
    plt.close(fig)


def durability(system, objs):
    for obj in objs:
        if "durability" in obj:
            return obj["durability"]
    return {
        OURS: "sled: a submit is fsynced (group commit) before its ack; a completion is written "
              "at once and fsynced by the next group commit",
        "bullmq": REDIS_DURABILITY,
        "celery": REDIS_DURABILITY,
        "apalis": "SQLite WAL, synchronous=FULL",
    }[system]


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)
    mode = "smoke" if args.smoke else "full"
    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    info = machine_info()
    sizes = SIZES[mode]
    print(f"benchmark suite, {mode} mode: W1 {sizes['w1']:,} jobs, W2 {sizes['w2']:,}, "
          f"W3 {sizes['w3'][0]}/s for {sizes['w3'][1]} s, W4 {sizes['w4']:,}; "
          f"{info['cores']} cores, load {info['load_average_at_start'][0]:.1f}", flush=True)

    for system, cap in W4_CAPS[mode].items():
        if system in args.systems and "w4" in args.workloads:
            print(f"  note: {system} W4 runs {cap:,} jobs, not {sizes['w4']:,} "
                  f"(the full size would not finish in a sitting on this machine)", flush=True)
    results = {s: {} for s in args.systems}

    def run_system(system):
        for workload in args.workloads:
            t = time.monotonic()
            obj = run_one(system, workload, args, mode, logs)
            results[system][workload] = obj
            status = "FAILED: " + obj["error"] if "error" in obj else "ok"
            print(f"  {system:<13} {workload}  {time.monotonic() - t:7.1f} s  {status}", flush=True)

    if mode == "smoke":
        # A smoke run checks that every system still works, not how fast:
        # the systems run side by side to keep it short.
        with ThreadPoolExecutor(len(args.systems)) as pool:
            list(pool.map(run_system, args.systems))
    else:
        # Measured runs are alone on the machine, one after another.
        for system in args.systems:
            run_system(system)

    failed = {s: {w: o for w, o in r.items() if "error" in o} for s, r in results.items()}
    failed = {s: f for s, f in failed.items() if f}
    doc = {
        "mode": mode,
        "machine": info,
        "sizes": {"w1_jobs": sizes["w1"], "w2_jobs": sizes["w2"],
                  "w3_rate": sizes["w3"][0], "w3_seconds": sizes["w3"][1],
                  "w4_jobs": sizes["w4"]},
        "systems": {
            s: {"version": next((o["version"] for o in results[s].values() if "version" in o), None),
                "durability": durability(s, results[s].values()),
                "notes": next((o["notes"] for o in results[s].values() if "notes" in o), None),
                "failed_workloads": sorted(failed.get(s, {}))}
            for s in args.systems
        },
        "goals": [{"goal": g, "holds": h, "detail": d} for g, h, d in goals(results, args.systems)],
        "results": results,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)

    print()
    print_table(results, args.systems)
    print_ratios(results, args.systems)
    print_ours_costs(results)
    if OURS in args.systems:
        print("\nGoals of the issue:")
        for g, holds, detail in goals(results, args.systems):
            mark = {True: "holds", False: "DOES NOT HOLD", None: "unknown"}[holds]
            print(f"  {g}: {mark} ({detail})")
    for system, by_workload in failed.items():
        shown = set()
        for workload, obj in by_workload.items():
            print(f"\n{system} {workload} FAILED: {obj['error']}")
            tail_text = obj.get("stderr_tail", "").rstrip()
            if tail_text and tail_text not in shown:
                shown.add(tail_text)
                print("  " + tail_text.replace("\n", "\n  "))
    draw(results, args.systems, out, sizes["w3"])
    print(f"\nwrote {out}/results.json, {out}/throughput.png, {out}/latency.png "
          f"(adapter logs in {logs})")
    if failed and mode == "smoke":
        sys.exit(f"smoke run: {len(failed)} system(s) failed: {', '.join(sorted(failed))}")


if __name__ == "__main__":
    main()
