// BullMQ (Redis) peer of the lts-rs benchmark suite.
//
// node bench.mjs --workload w1|w2|w3|w4 --jobs N --rate R --seconds S --redis-url URL
//   [--concurrency C] [--in-flight K]
//
// Producer and Worker run in this one process (one Node event loop); Redis
// is the server. Prints one JSON object as its last stdout line; see
// bench/README.md for the contract.

import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createRequire } from 'node:module';
import IORedis from 'ioredis';
import { Queue, Worker } from 'bullmq';

const require = createRequire(import.meta.url);
const BULLMQ_VERSION = require('bullmq/package.json').version;
const IOREDIS_VERSION = require('ioredis/package.json').version;
const BATCH = 1000;
const BATCH_IN_FLIGHT = 4;

function parseArgs(argv) {
  const args = {
    workload: '', jobs: 1000, rate: 500, seconds: 10, redisUrl: '',
    concurrency: 100, inFlight: 64,
  };
  const names = {
    '--workload': ['workload', String], '--jobs': ['jobs', Number],
    '--rate': ['rate', Number], '--seconds': ['seconds', Number],
    '--redis-url': ['redisUrl', String], '--concurrency': ['concurrency', Number],
    '--in-flight': ['inFlight', Number],
  };
  for (let i = 0; i < argv.length; i += 2) {
    const spec = names[argv[i]];
    if (!spec || i + 1 >= argv.length) die(`bad argument ${argv[i]}`);
    const value = spec[1](argv[i + 1]);
    if (spec[1] === Number && !Number.isFinite(value)) die(`${argv[i]}: not a number`);
    args[spec[0]] = value;
  }
  if (!['w1', 'w2', 'w3', 'w4'].includes(args.workload)) die('--workload must be w1..w4');
  if (!args.redisUrl) die('--redis-url is required');
  return args;
}

function die(msg) {
  console.error(`bullmq peer: ${msg}`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const connection = () => new IORedis(args.redisUrl, { maxRetriesPerRequest: null });
const admin = connection();

function queue(name) {
  const q = new Queue(name, { connection: connection() });
  return q;
}

// A no-op processor; `onStart` sees each job as it starts. The Worker
// counts its completions from the start, so none is missed.
function startWorker(name, onStart) {
  const w = new Worker(name, async (job) => { onStart(job); }, {
    connection: connection(), concurrency: args.concurrency,
  });
  w.completedHere = 0;
  w.on('completed', () => { w.completedHere += 1; });
  w.on('failed', (job, err) => die(`job failed: ${err}`));
  return w;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves once `n` jobs of the queue are in its completed set, which
// BullMQ writes in the same Lua script that finishes a job (fsynced by
// Redis before the script returns, with appendfsync always).
async function untilCompleted(q, worker, n, limitMs) {
  const deadline = Date.now() + limitMs;
  while (worker.completedHere < n) {
    if (Date.now() > deadline) die('jobs did not complete in time');
    await sleep(2);
  }
  while ((await q.getCompletedCount()) < n) {
    if (Date.now() > deadline) die('completed set short of the job count');
    await sleep(5);
  }
}

async function addSingle(q, n, inFlight) {
  let next = 0;
  const loops = [];
  for (let k = 0; k < inFlight; k++) {
    loops.push((async () => {
      while (next < n) {
        next += 1;
        await q.add('noop', { t: performance.now() });
      }
    })());
  }
  await Promise.all(loops);
}

async function addBatched(q, n) {
  const sizes = [];
  for (let start = 0; start < n; start += BATCH) sizes.push(Math.min(BATCH, n - start));
  const loops = [];
  for (let k = 0; k < BATCH_IN_FLIGHT; k++) {
    loops.push((async () => {
      for (let size = sizes.shift(); size !== undefined; size = sizes.shift()) {
        const t = performance.now();
        const jobs = Array.from({ length: size }, () => ({ name: 'noop', data: { t } }));
        await q.addBulk(jobs);
      }
    })());
  }
  await Promise.all(loops);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}

async function redisServerStats() {
  const info = await admin.info('server');
  const pid = /process_id:(\d+)/.exec(info)?.[1];
  const [, dir] = await admin.config('GET', 'dir');
  let rss = null;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    rss = Number(/VmHWM:\s+(\d+)/.exec(status)[1]) / 1024;
  } catch { /* not readable: leave it null */ }
  const sizeOf = (p) => {
    const st = statSync(p);
    if (!st.isDirectory()) return st.size;
    return readdirSync(p).reduce((sum, e) => sum + sizeOf(join(p, e)), 0);
  };
  return { rssMib: rss, diskMib: sizeOf(dir) / (1024 * 1024) };
}

const workloads = {
  async w1() {
    const n = args.jobs;
    const single = queue('w1-single');
    let t = performance.now();
    await addSingle(single, n, args.inFlight);
    const singleRate = n / ((performance.now() - t) / 1000);
    const batched = queue('w1-batched');
    t = performance.now();
    await addBatched(batched, n);
    const batchedRate = n / ((performance.now() - t) / 1000);
    return {
      jobs: n, single_jobs_per_s: singleRate, batched_jobs_per_s: batchedRate,
      batch: BATCH, in_flight: args.inFlight,
    };
  },

  async w2() {
    const n = args.jobs;
    const q = queue('w2');
    await addBatched(q, n);
    const t = performance.now();
    const w = startWorker('w2', () => {});
    await untilCompleted(q, w, n, 3600e3);
    const s = (performance.now() - t) / 1000;
    return { jobs: n, seconds: s, jobs_per_s: n / s };
  },

  async w3() {
    const n = Math.round(args.rate * args.seconds);
    const q = queue('w3');
    const samples = [];
    const w = startWorker('w3', (job) => { samples.push(performance.now() - job.data.t); });
    await w.waitUntilReady();
    await q.waitUntilReady();
    const start = performance.now();
    const adds = [];
    for (let i = 0; i < n; i++) {
      // Scheduled by target time, so a late tick does not shift the rest.
      const wait = start + (i * 1000) / args.rate - performance.now();
      if (wait > 0) await sleep(wait);
      adds.push(q.add('noop', { t: performance.now() }));
    }
    await Promise.all(adds);
    await untilCompleted(q, w, n, 600e3);
    samples.sort((a, b) => a - b);
    return {
      jobs: n, rate: args.rate, seconds: args.seconds,
      p50_ms: percentile(samples, 50), p99_ms: percentile(samples, 99),
      max_ms: samples[samples.length - 1] ?? null, samples_ms: samples,
    };
  },

  async w4() {
    const n = args.jobs;
    const q = queue('w4');
    let t = performance.now();
    await addBatched(q, n);
    const submit = n / ((performance.now() - t) / 1000);
    const { diskMib } = await redisServerStats();
    t = performance.now();
    const w = startWorker('w4', () => {});
    await untilCompleted(q, w, n, 7200e3);
    const drain = n / ((performance.now() - t) / 1000);
    const { rssMib } = await redisServerStats();
    return {
      jobs: n, submit_jobs_per_s: submit, drain_jobs_per_s: drain,
      rss_mib: rssMib, disk_mib: diskMib,
    };
  },
};

const [, appendfsync] = await admin.config('GET', 'appendfsync');
const [, appendonly] = await admin.config('GET', 'appendonly');
const redisVersion = /redis_version:(\S+)/.exec(await admin.info('server'))[1];
const results = await workloads[args.workload]();
const line = JSON.stringify({
  system: 'bullmq',
  version: `bullmq ${BULLMQ_VERSION}, ioredis ${IOREDIS_VERSION}, Node ${process.versions.node}, Redis ${redisVersion}`,
  workload: args.workload,
  durability: `Redis appendonly ${appendonly}, appendfsync ${appendfsync}; jobs kept after completion (BullMQ default)`,
  results,
  notes: `Queue and Worker in one Node process. single = queue.add, one job per call, ${args.inFlight} calls in flight; `
    + `batched = queue.addBulk of ${BATCH}, ${BATCH_IN_FLIGHT} in flight; Worker concurrency ${args.concurrency}, no-op processor; `
    + 'done = job in the completed set. W4 RSS = redis-server VmHWM, disk = Redis data dir after the submit.',
});
// Closing a Worker waits for its blocking connection; exit instead, once
// the line is written (a pipe takes it asynchronously: exiting at once
// would cut a long line short).
process.stdout.write(`${line}\n`, () => process.exit(0));
