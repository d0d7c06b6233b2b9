"""Benchmark scale-out: the bot's fair queue feeding N worker PROCESSES through a loopback Redis.

Not a test (timings depend on the machine); run it by hand and paste the tables into bench/RESULTS.md:

    .venv/bin/python bench/bench_scaling.py                      # simulated GPUs, then the tiny engine
    .venv/bin/python bench/bench_scaling.py --workers 1,2,4,8 --tiny-workers 1,2 --output bench/RESULTS.md

(a) Simulated GPUs: each worker's engine sleeps like a GPU, ``a + b * images`` seconds per batch (default
    0.4 + 0.1 per image), so only the dispatch path costs CPU. 200 jobs from 50 members (4 each) are submitted at
    once to the bot's GenerationWorker (RedisRunner backend, max_batch_size 4, queue.prefetch 1) with 1, 2, 4
    and 8 worker processes. Reported: images/s and the speed-up over one worker, the best speed-up possible
    with whole batches (the last wave may be partly empty), dispatch overhead per job (the time workers were
    not in the engine, per job: N x wall time - engine time, divided by the jobs), and fairness (every member's
    first image finished before any member's third).
(b) Dispatch latency at light load: jobs arrive one every ``--light-interval`` seconds while 2 workers are idle:
    p50/p99 of accept -> handed to Redis (the bot's queue and batching) and accept -> claimed by a worker (the
    round trip through Redis), without queueing behind other jobs.
(c) The real ``tiny`` engine: 16 jobs from 8 members (``--tiny-size``, ``--tiny-steps``) on 1 vs 2 worker
    processes, each worker with ``--tiny-threads`` torch threads. On a machine with two CPU cores two workers
    share the same cores, so expect little or no gain there; the point is that nothing breaks and the numbers
    are honest.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from generation.dispatch.redis_backend import RedisRunner, connect  # noqa: E402
from generation.dispatch.settings import QueueSettings  # noqa: E402
from generation.request import GenerationRequest  # noqa: E402
from generation.worker import GenerationResult, GenerationWorker, JobHandle  # noqa: E402

SIM_MODEL = "sim"


# --------------------------------------------------------------------------- worker processes


class SleepEngine:
    """Behaves like a GPU for the dispatch path: sleeps ``a + b * images`` per call, returns 8x8 images."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b
        self.model_name = SIM_MODEL

    def batch_key(self, request: GenerationRequest) -> tuple:
        return (request.width, request.height, request.steps, request.scheduler)

    def generate(self, requests: Sequence[GenerationRequest], *, on_step: Any = None, should_stop: Any = None) -> list:
        from PIL import Image

        images = sum(r.count for r in requests)
        total = requests[0].steps
        per_step = (self.a + self.b * images) / total
        for step in range(1, total + 1):
            time.sleep(per_step)  # the simulated GPU; the GIL is free meanwhile, as with real CUDA kernels
            if should_stop is not None and should_stop():
                return [[] for _ in requests]
            if on_step is not None:
                on_step(step, total, None)
        return [[Image.new("RGB", (8, 8), ((r.seed + i) % 256, 0, 0)) for i in range(r.count)] for r in requests]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def free_memory(self) -> None:
        pass

    def tokens_truncated(self, prompt: str) -> bool:
        return False


async def serve(args: argparse.Namespace) -> None:
    """One worker process (``--serve sleep|tiny``) until SIGTERM."""
    from generation.dispatch.remote_worker import RemoteWorker

    settings = QueueSettings(backend="redis", redis_url=args.redis_url, redis_prefix=args.prefix,
                             prefetch=args.prefetch, lease_seconds=30)
    if args.serve == "sleep":
        engine: Any = SleepEngine(args.a, args.b)
        model, device = SIM_MODEL, "sleep"
    else:
        import torch

        from generation.engine import DiffusionEngine
        from generation.loading import load_pipeline
        from generation.settings import GenerationSettings

        torch.set_num_threads(args.tiny_threads)
        gen = GenerationSettings(model="tiny", device="cpu", dtype="fp32", min_size=64, max_size=512, previews=False)
        engine = DiffusionEngine(load_pipeline(gen), gen)
        model, device = "tiny", f"cpu x{args.tiny_threads} thread(s)"
    local = GenerationWorker(engine, queue_size=1, max_batch_size=args.max_batch, previews=False)
    await local.start()
    client = connect(args.redis_url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    remote = RemoteWorker(client, settings, local, models=[model], device=device, max_batch=args.max_batch)
    try:
        await remote.run(stop)
    finally:
        await local.close()
        await client.aclose()


class Processes:
    """Worker processes of one configuration."""

    def __init__(self, args: argparse.Namespace, kind: str, count: int, prefix: str, log_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.tiny_threads)}
        self.processes = []
        for index in range(count):
            log = (log_dir / f"{prefix}-{index}.log").open("wb")
            self.processes.append(subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--redis-url", args.redis_url, "--prefix", prefix,
                 "--a", str(args.a), "--b", str(args.b), "--max-batch", str(args.max_batch),
                 "--prefetch", str(args.prefetch), "--tiny-threads", str(args.tiny_threads)],
                stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


# --------------------------------------------------------------------------- the bot side


@dataclass
class Run:
    workers: int
    jobs: int
    images: int
    wall: float
    batch_seconds: list[float]  # engine time of each batch, as the workers reported it
    batches: int
    fair: bool
    accept_to_dispatch: list[float] = field(default_factory=list)
    accept_to_claim: list[float] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall

    @property
    def makespan_bound(self) -> float:
        """The shortest possible wall time: all engine time spread evenly, or whole batches in waves."""
        if not self.batch_seconds:
            return 0.0
        waves = -(-len(self.batch_seconds) // self.workers)
        return max(sum(self.batch_seconds) / self.workers, waves * statistics.median(self.batch_seconds))

    @property
    def overhead_per_job_ms(self) -> float:
        """Worker time lost to dispatch (beyond the packing bound), per job."""
        return 1000 * max(0.0, self.wall - self.makespan_bound) * self.workers / self.jobs


class TimedRunner(RedisRunner):
    """Notes when each job is handed to Redis (the fair queue's decision)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launched_at: dict[str, float] = {}

    def launch(self, batch: list[JobHandle]) -> asyncio.Future:
        now = time.perf_counter()
        for job in batch:
            self.launched_at[job.job_id] = now
        return super().launch(batch)


def request(member: int, index: int, *, size: int = 64, steps: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=f"member {member} image {index}", negative_prompt="", seed=member * 10 + index,
                             steps=steps, guidance=7.0, width=size, height=size, count=1, scheduler="euler_a",
                             requester_id=f"m{member}")


async def bot_side(args: argparse.Namespace, prefix: str, workers: int, model: str) -> tuple[GenerationWorker,
                                                                                          TimedRunner]:
    settings = QueueSettings(backend="redis", redis_url=args.redis_url, redis_prefix=prefix, prefetch=args.prefetch,
                             lease_seconds=30)
    runner = TimedRunner(settings, default_model=model)
    bot = GenerationWorker(None, queue_size=1000, max_batch_size=args.max_batch, runner=runner)
    await bot.start()
    deadline = time.monotonic() + args.start_timeout
    while len(runner.status()["workers"]) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(runner.status()['workers'])} of {workers} workers came up; see the logs")
        await asyncio.sleep(0.2)  # waiting for processes to import torch and announce themselves
    return bot, runner


async def saturated(args: argparse.Namespace, prefix: str, workers: int, members: int, per_member: int,
                    model: str, size: int, steps: int) -> Run:
    """All jobs submitted at once; throughput, overhead and fairness."""
    bot, runner = await bot_side(args, prefix, workers, model)
    claimed: dict[str, float] = {}
    bot.add_placement_listener(lambda job_id, _: claimed.setdefault(job_id, time.perf_counter()))
    try:
        started = time.perf_counter()
        handles: list[tuple[int, int, float, JobHandle]] = []
        for index in range(per_member):
            for member in range(members):
                handles.append((member, index, time.perf_counter(),
                                bot.submit(request(member, index, size=size, steps=steps))))
        finished: dict[tuple[int, int], float] = {}
        results: list[GenerationResult] = []

        async def follow(member: int, index: int, handle: JobHandle) -> None:
            results.append(await handle)
            finished[(member, index)] = time.perf_counter()

        await asyncio.gather(*(follow(m, i, h) for m, i, _, h in handles))
        wall = time.perf_counter() - started
    finally:
        await bot.close()
    # Every job of a batch reports the batch's engine seconds: keep one per batch.
    batch_seconds = list({(r.worker_id, r.elapsed_seconds): r.elapsed_seconds for r in results}.values())
    firsts = max(finished[(m, 0)] for m in range(members))
    thirds = min(finished[(m, 2)] for m in range(members)) if per_member >= 3 else float("inf")
    return Run(workers=workers, jobs=len(handles), images=sum(len(r.images) for r in results), wall=wall,
               batch_seconds=batch_seconds, batches=runner.launched_batches, fair=firsts <= thirds,
               accept_to_dispatch=[runner.launched_at[h.job_id] - t for _, _, t, h in handles],
               accept_to_claim=[claimed[h.job_id] - t for _, _, t, h in handles if h.job_id in claimed])


async def light(args: argparse.Namespace, prefix: str, workers: int) -> Run:
    """Jobs one at a time, spaced so the workers are idle: the dispatch path's own latency."""
    bot, runner = await bot_side(args, prefix, workers, SIM_MODEL)
    claimed: dict[str, float] = {}
    bot.add_placement_listener(lambda job_id, _: claimed.setdefault(job_id, time.perf_counter()))
    submitted: list[tuple[float, JobHandle]] = []
    try:
        started = time.perf_counter()
        pending = []
        for index in range(args.light_jobs):
            submitted.append((time.perf_counter(), bot.submit(request(index, 0))))
            pending.append(submitted[-1][1])
            await asyncio.sleep(args.light_interval)  # the arrival process of this run
        results = await asyncio.gather(*pending)
        wall = time.perf_counter() - started
    finally:
        await bot.close()
    return Run(workers=workers, jobs=len(submitted), images=len(results), wall=wall, batch_seconds=[],
               batches=runner.launched_batches, fair=True,
               accept_to_dispatch=[runner.launched_at[h.job_id] - t for t, h in submitted],
               accept_to_claim=[claimed[h.job_id] - t for t, h in submitted if h.job_id in claimed])


# --------------------------------------------------------------------------- reporting


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def best_speedup(batches: int, workers: int) -> float:
    """Whole batches on N workers: the makespan is ceil(batches / N) batch times."""
    return batches / -(-batches // workers)


def environment() -> str:
    import torch

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return (f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, load average "
            f"{load:.1f} at the start; torch {torch.__version__}; Redis {redis_version.removeprefix('v=')} on loopback")


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


async def light_report(args: argparse.Namespace, log_dir: Path) -> list[str]:
    procs = Processes(args, "sleep", 2, "light", log_dir)
    try:
        run = await light(args, "light", 2)
    finally:
        procs.stop()
    to_redis = [1000 * v for v in run.accept_to_dispatch]
    to_claim = [1000 * v for v in run.accept_to_claim]
    lines = [f"### (b) dispatch latency at light load: {run.jobs} jobs, one every {args.light_interval:g} s, "
             "2 idle workers", "",
             "| path | p50 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: |",
             f"| accept -> handed to Redis | {statistics.median(to_redis):.2f} | {percentile(to_redis, 0.99):.2f} "
             f"| {max(to_redis):.2f} |",
             f"| accept -> claimed by a worker | {statistics.median(to_claim):.2f} | "
             f"{percentile(to_claim, 0.99):.2f} | {max(to_claim):.2f} |", ""]
    print("\n".join(lines), flush=True)
    return lines


async def bench(args: argparse.Namespace) -> str:
    lines: list[str] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    redis, args.redis_url = start_redis(log_dir)
    try:
        lines += [f"## Scale-out over Redis: {environment()}", ""]
        lines += [f"### (a) simulated GPUs: {args.jobs_per_member * args.members} jobs from {args.members} members, "
                  f"batch time {args.a:g} + {args.b:g} x images s, max_batch_size {args.max_batch}, "
                  f"prefetch {args.prefetch}", "",
                  "| workers | batches | wall s | images/s | speed-up vs 1 | / N | best with whole batches | "
                  "/ best | dispatch overhead per job ms | fair (1st before 3rd) | p99 accept->dispatch s |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        base: float | None = None
        for count in args.workers:
            prefix = f"sim{count}"
            procs = Processes(args, "sleep", count, prefix, log_dir)
            try:
                run = await saturated(args, prefix, count, args.members, args.jobs_per_member, SIM_MODEL, 64, 4)
            finally:
                procs.stop()
            base = base or run.images_per_second
            speedup = run.images_per_second / base
            best = best_speedup(run.batches, count)
            lines.append(f"| {count} | {run.batches} | {run.wall:.2f} | {run.images_per_second:.2f} | {speedup:.2f}x | "
                         f"{speedup / count:.2f} | {best:.2f}x | {speedup / best:.2f} | "
                         f"{run.overhead_per_job_ms:.1f} | {'yes' if run.fair else 'NO'} | "
                         f"{percentile(run.accept_to_dispatch, 0.99):.2f} |")
            print(lines[-1], flush=True)
        lines.append("")
        if args.light_jobs:
            lines += await light_report(args, log_dir)
        if args.tiny_workers:
            lines += [f"### (c) the tiny engine: 16 jobs from 8 members, {args.tiny_size}x{args.tiny_size}, "
                      f"{args.tiny_steps} steps, {args.tiny_threads} torch thread(s) per worker", "",
                      "| workers | batches | wall s | images/s | speed-up vs 1 |",
                      "| ---: | ---: | ---: | ---: | ---: |"]
            base = None
            for count in args.tiny_workers:
                prefix = f"tiny{count}"
                procs = Processes(args, "tiny", count, prefix, log_dir)
                try:
                    await saturated(args, prefix, count, 2, 1, "tiny", args.tiny_size, args.tiny_steps)  # warm-up
                    run = await saturated(args, prefix, count, 8, 2, "tiny", args.tiny_size, args.tiny_steps)
                finally:
                    procs.stop()
                base = base or run.images_per_second
                lines.append(f"| {count} | {run.batches} | {run.wall:.2f} | {run.images_per_second:.2f} | "
                             f"{run.images_per_second / base:.2f}x |")
                print(lines[-1], flush=True)
            lines.append("")
    finally:
        redis.terminate()
        redis.wait()
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker process counts for (a)")
    parser.add_argument("--tiny-workers", default="1,2", help="worker process counts for (c); empty: skip")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--jobs-per-member", type=int, default=4)
    parser.add_argument("--a", type=float, default=0.4, help="simulated seconds per batch")
    parser.add_argument("--b", type=float, default=0.1, help="simulated seconds per image in a batch")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--light-jobs", type=int, default=100)
    parser.add_argument("--light-interval", type=float, default=0.5)
    parser.add_argument("--tiny-size", type=int, default=128)
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--tiny-threads", type=int, default=1)
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--output", help="append the tables to this file")
    parser.add_argument("--serve", choices=("sleep", "tiny"), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args))
        return 0
    args.workers = [int(n) for n in args.workers.split(",") if n]
    args.tiny_workers = [int(n) for n in args.tiny_workers.split(",") if n]
    report = asyncio.run(bench(args))
    print(report)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as out:
            out.write("\n" + report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
