#!/usr/bin/env python3
"""Submit jobs to a JobTracker from Python and collect their feedback.

The example subscribes to the feedback of a submit node group, submits N
jobs that ask for feedback (each runs a program with the TaskTracker's
built-in shell runner), waits until the feedback of every job has arrived,
acks it, and prints a summary. It exits 0 only if every job was accepted
and its feedback arrived before the timeout.

Feedback is delivered at least once: the tracker pushes an item again until
some client of the group acks it, so the same item may arrive twice. This
script counts each job once, whatever the number of deliveries.

With --tls-ca the connection is TLS (the JobTracker runs with --tls-cert
and --tls-key), and --token-file sends a bearer token with every call (the
JobTracker runs with --token-file; the token needs the `submit` role for the
submit node group). gRPC sends tokens over TLS only. --tls-cert and
--tls-key add a client certificate for mutual TLS.

Run it through run.sh, which generates the `lts.v1` modules it imports.
"""

import argparse
import json
import queue
import sys
import threading
import time

import grpc

from lts.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

# Same as lts_common::limits::MAX_MESSAGE_BYTES.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Same as lts_common::limits::MAX_BATCH.
MAX_BATCH = 10_000


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobtracker", default="127.0.0.1:7070",
                   help="JobTracker address, host:port (default %(default)s)")
    p.add_argument("--node-group", default="workers",
                   help="node group of the TaskTrackers that run the jobs (default %(default)s)")
    p.add_argument("--submit-node-group", default="python-example",
                   help="node group that receives the feedback (default %(default)s)")
    p.add_argument("--count", type=int, default=10, help="jobs to submit (default %(default)s)")
    p.add_argument("--program", default="true",
                   help="program the shell runner starts for each job (default %(default)s)")
    p.add_argument("--arg", action="append", default=[], dest="args",
                   help="an argument of --program; repeat for several")
    p.add_argument("--task-id-prefix", default=None,
                   help="task ids are PREFIX0, PREFIX1, ... (default: py-<unix time>-)")
    p.add_argument("--tls-ca", default=None,
                   help="PEM CA certificate that signs the JobTracker's certificate: connect over TLS")
    p.add_argument("--tls-cert", default=None,
                   help="PEM client certificate for mutual TLS (with --tls-key and --tls-ca)")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", default=None,
                   help="name to check the JobTracker's certificate against, if not the host of --jobtracker")
    p.add_argument("--token-file", default=None,
                   help="file holding the bearer token sent with every call (needs --tls-ca)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for all feedback (default %(default)s)")
    args = p.parse_args()
    if args.count < 1:
        p.error("--count: must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout: must be more than 0")
    if args.token_file and not args.tls_ca:
        p.error("--token-file: needs --tls-ca (a token is never sent in plaintext)")
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if (args.tls_cert or args.tls_server_name) and not args.tls_ca:
        p.error("--tls-cert/--tls-server-name: need --tls-ca")
    args.jobtracker = args.jobtracker.removeprefix("https://").removeprefix("http://").rstrip("/")
    return args


def read_file(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit(f"{what} {path}: {e.strerror}")


def open_channel(args):
    """A plaintext channel, or TLS with an optional client certificate and
    token: what the Rust clients do with the same flags."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if not args.tls_ca:
        return grpc.insecure_channel(args.jobtracker, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(args.tls_ca, "--tls-ca"),
        private_key=read_file(args.tls_key, "--tls-key") if args.tls_key else None,
        certificate_chain=read_file(args.tls_cert, "--tls-cert") if args.tls_cert else None,
    )
    if args.token_file:
        token = read_file(args.token_file, "--token-file").decode().strip()
        # Sent as `authorization: Bearer <token>` with every call.
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.jobtracker, credentials, options=options)


class FeedbackStream:
    """The bidirectional Feedback stream: subscribe first, then acks."""

    def __init__(self, stub, submit_node_group, client_id):
        self._outbound = queue.Queue()
        self._outbound.put(job_service_pb2.FeedbackClientMessage(
            subscribe=job_service_pb2.Subscribe(
                submit_node_group=submit_node_group, client_id=client_id)))
        self._call = stub.Feedback(self._requests())
        self.items = queue.Queue()
        self.error = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            message = self._outbound.get()
            if message is None:
                return
            yield message

    def _read(self):
        try:
            for message in self._call:
                for item in message.items:
                    self.items.put(item)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{e.code().name}: {e.details()}"
        finally:
            self.items.put(None)

    def ack(self, feedback_ids):
        if feedback_ids:
            self._outbound.put(job_service_pb2.FeedbackClientMessage(
                ack=job_service_pb2.FeedbackAck(feedback_ids=list(feedback_ids))))

    def close(self):
        self._outbound.put(None)
        self._call.cancel()


def make_jobs(args):
    prefix = args.task_id_prefix or f"py-{int(time.time())}-"
    payload = json.dumps({"program": args.program, "args": args.args, "env": {}}).encode()
    return [
        job_pb2.JobSpec(
            task_id=f"{prefix}{i}",
            task_tracker_node_group=args.node_group,
            submit_node_group=args.submit_node_group,
            need_feedback=True,
            payload=payload,
            params={"example": "python"},
        )
        for i in range(args.count)
    ]


def submit(stub, jobs):
    """Returns {job_id: task_id} of the accepted jobs, and the refusals."""
    accepted, refused = {}, []
    for start in range(0, len(jobs), MAX_BATCH):
        batch = jobs[start:start + MAX_BATCH]
        response = stub.SubmitJobs(job_service_pb2.SubmitJobsRequest(jobs=batch), timeout=60)
        for job, result in zip(batch, response.results):
            if result.WhichOneof("result") == "job_id":
                accepted[result.job_id] = job.task_id
            else:
                e = result.error
                refused.append(f"task {job.task_id}: {e.code} {e.field}: {e.message}")
    return accepted, refused


def main():
    args = parse_args()
    channel = open_channel(args)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    except grpc.FutureTimeoutError:
        print(f"cannot reach a JobTracker at {args.jobtracker} within 10 s", file=sys.stderr)
        return 3
    stub = job_service_pb2_grpc.JobServiceStub(channel)

    # Subscribe before submitting, so the stream is ready when results come.
    # (Nothing is lost either way: the tracker keeps feedback until acked.)
    stream = FeedbackStream(stub, args.submit_node_group, f"python-example-{int(time.time())}")

    started = time.monotonic()
    try:
        accepted, refused = submit(stub, make_jobs(args))
    except grpc.RpcError as e:
        stream.close()
        print(f"submit failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 3
    print(f"submitted {args.count} jobs: {len(accepted)} accepted, {len(refused)} refused")
    for line in refused:
        print(f"  refused {line}")

    outcomes = {}  # job id -> (state, outcome kind)
    deliveries = 0
    deadline = started + args.timeout
    while len(outcomes) < len(accepted):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            item = stream.items.get(timeout=remaining)
        except queue.Empty:
            break
        if item is None:
            break
        if item.job_id not in accepted:
            # Feedback of someone else's job in this group: leave it unacked
            # for the client it belongs to.
            continue
        deliveries += 1
        state = job_pb2.JobState.Name(item.state)
        kind = item.outcome.WhichOneof("kind") or "none"
        outcomes[item.job_id] = (state, kind)
        stream.ack([item.feedback_id])
    stream.close()

    elapsed = time.monotonic() - started
    by_state = {}
    for state, kind in outcomes.values():
        key = f"{state.removeprefix('JOB_STATE_').lower()}/{kind}"
        by_state[key] = by_state.get(key, 0) + 1
    print(f"feedback for {len(outcomes)} of {len(accepted)} jobs in {elapsed:.1f} s "
          f"({deliveries} deliveries)")
    for key, n in sorted(by_state.items()):
        print(f"  {key}: {n}")
    if stream.error:
        print(f"feedback stream ended: {stream.error}", file=sys.stderr)
    missing = [task for job, task in accepted.items() if job not in outcomes]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        print(f"no feedback within {args.timeout:g} s for {len(missing)} jobs: {shown}",
              file=sys.stderr)
    if refused or missing:
        return 1
    print("ok: every job's feedback arrived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
