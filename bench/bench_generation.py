"""Benchmark the generation path: cross-member batching, worker overhead, peak memory.

Not a test (timings depend on the machine); run it by hand and paste the table into bench/RESULTS.md:

    .venv/bin/python bench/bench_generation.py --arch tiny --size 256 --steps 20 --repeats 3 --vanilla

(a) 8 requests from 8 members through ``GenerationWorker`` with ``max_batch_size`` 4/8 vs 1 (one at a time):
    images/s and the speed-up over one at a time.
(b) one request through the worker (queue, thread hop, progress events, PNG encoding) vs the same request as one
    direct diffusers pipeline call: the worker's overhead ratio.
(c) peak memory of each phase: RSS (Linux VmHWM, reset per phase) on CPU, ``torch.cuda.max_memory_allocated``
    on CUDA.
``--vanilla`` adds a plain ``StableDiffusionPipeline`` built from the same weights running the same 8 requests
one call each and as one call of 8, so the worker's numbers can be compared with the best diffusers can do.
Every number is the median over ``--repeats`` rounds after one warm-up round.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from generation.engine import DiffusionEngine  # noqa: E402
from generation.loading import LoadedModel, resolve_device, resolve_dtype  # noqa: E402
from generation.request import GenerationRequest, ImageParams  # noqa: E402
from generation.schedulers import make_scheduler  # noqa: E402
from generation.settings import GenerationSettings  # noqa: E402
from generation.tiny import build_sd15_random_pipeline, build_tiny_pipeline  # noqa: E402
from generation.worker import GenerationWorker  # noqa: E402

PROMPTS = [
    "a red cat sitting on a chair, highly detailed",
    "mountain landscape at sunset, oil painting",
    "portrait photo of an old man, bokeh",
    "a castle in the clouds, fantasy art",
    "cyberpunk city street at night, neon",
    "a bowl of fruit, watercolor",
    "astronaut riding a horse on the moon",
    "a tiny robot in a garden, macro shot",
]


# --------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of one phase: CUDA allocator peak on GPU, resident set high-water mark on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._can_reset_rss = os.path.exists("/proc/self/clear_refs")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self._can_reset_rss:
            try:
                with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
                    f.write("5")
            except OSError:
                self._can_reset_rss = False

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if self._can_reset_rss:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; process lifetime peak

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return "peak CUDA allocated (MiB)"
        return "peak RSS (MiB)" if self._can_reset_rss else "peak RSS since start (MiB)"


# --------------------------------------------------------------------------- helpers


class RecordingEngine:
    """Passes everything to the real engine and records how many images each pipeline call had."""

    def __init__(self, engine: DiffusionEngine) -> None:
        self._engine = engine
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> list[list[Any]]:
        self.calls.append(sum(r.params.count for r in requests))
        return self._engine.generate(requests, **kw)


def make_requests(args: argparse.Namespace, n: int = 8) -> list[GenerationRequest]:
    return [
        GenerationRequest(ImageParams(prompt=PROMPTS[i % len(PROMPTS)], negative_prompt="blurry" if i % 2 else "",
                                      seed=1000 + i, steps=args.steps, guidance=7.5, width=args.size,
                                      height=args.size, count=1, scheduler=args.scheduler, model=args.arch),
                          requester_id=f"member-{i}")
        for i in range(n)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# Every torch call of the benchmark runs on this one thread, the worker's included: on CPU, torch calls that
# alternate between two threads slow each other down about 2x, which would be charged to whichever phase ran
# on the "other" thread (measured: 0.66 s a call on one thread, 1.2 s when alternating with a second thread).
PIPELINE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-pipeline")


def on_pipeline_thread(fn: Callable[[], float]) -> Callable[[], float]:
    return lambda: PIPELINE_THREAD.submit(fn).result()


async def through_worker(engine: RecordingEngine, requests: list[GenerationRequest], max_batch: int) -> float:
    """Submit all requests at once (as 8 members pressing Enter together) and wait for every result."""
    worker = GenerationWorker(engine, queue_size=64, max_batch_size=max_batch, previews=False,
                              executor=PIPELINE_THREAD)
    await worker.start()
    try:
        started = time.perf_counter()
        handles = [worker.submit(r) for r in requests]
        results = await asyncio.gather(*handles)
        elapsed = time.perf_counter() - started
    finally:
        await worker.close()
    assert sum(len(r.images) for r in results) == sum(r.params.count for r in requests)
    return elapsed


def vanilla_pipeline(loaded: LoadedModel, scheduler: str) -> StableDiffusionPipeline:
    """A plain diffusers pipeline over the same modules (weights are shared, not copied)."""
    components = dict(loaded.pipeline.components)
    components["scheduler"] = make_scheduler(scheduler, loaded.pipeline.scheduler.config)
    pipe = StableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct_call(pipe: StableDiffusionPipeline, requests: Sequence[GenerationRequest], device: torch.device) -> float:
    """One diffusers call for *requests* (one generator per image, as the engine does)."""
    gen_device = "cuda" if device.type == "cuda" else "cpu"
    params = [r.params for r in requests]
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(prompt=[p.prompt for p in params], negative_prompt=[p.negative_prompt for p in params],
             num_inference_steps=params[0].steps, guidance_scale=params[0].guidance,
             width=params[0].width, height=params[0].height,
             generator=[torch.Generator(gen_device).manual_seed(p.seed) for p in params])
    sync(device)
    return time.perf_counter() - started


@dataclass
class Row:
    name: str
    images: int
    seconds: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    calls: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --------------------------------------------------------------------------- main


def build(args: argparse.Namespace) -> LoadedModel:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    builder = build_tiny_pipeline if args.arch == "tiny" else build_sd15_random_pipeline
    pipe = builder(dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipe, name=args.arch, device=device, dtype=dtype)


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", default="1,4,8", help="max_batch_size values to compare (1 is the baseline)")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto")
    parser.add_argument("--scheduler", default="euler_a")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vanilla", action="store_true", help="also time a plain diffusers pipeline")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice). On a "
                        "shared, oversubscribed CPU, 1 avoids OpenMP barrier stalls that make timings erratic")
    parser.add_argument("--output", type=Path, help="also append the markdown to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = sorted({int(b) for b in args.batch.split(",")} | {1})

    started = time.perf_counter()
    loaded = PIPELINE_THREAD.submit(build, args).result()  # even the weights' init: one torch thread
    settings = GenerationSettings(model=args.arch, device=args.device, dtype=args.dtype)
    engine = RecordingEngine(DiffusionEngine(loaded, settings))
    device = loaded.device
    memory = PeakMemory(device)
    requests = make_requests(args)
    print(f"built {args.arch} in {time.perf_counter() - started:.1f}s; warming up", file=sys.stderr)

    # Every phase runs once per round, rounds repeated: background load on a shared machine then hits all
    # phases alike instead of whichever happened to run during a burst.
    phases: list[tuple[Row, Callable[[], float]]] = []
    batch_calls: dict[int, list[list[int]]] = {b: [] for b in batches}

    def worker_run(b: int, batch: list[GenerationRequest]) -> float:
        engine.calls.clear()
        elapsed = asyncio.run(through_worker(engine, batch, b))
        batch_calls[b].append(list(engine.calls))
        return elapsed

    # (a) 8 members, batched vs one at a time
    for b in batches:
        phases.append((Row(f"worker, 8 members, max_batch_size={b}", len(requests)),
                       lambda b=b: worker_run(b, requests)))
    # (b) worker overhead for a single request
    single = requests[:1]
    direct_pipe = vanilla_pipeline(loaded, args.scheduler)
    direct = Row("direct diffusers call, 1 request", 1, calls="1")
    via_worker = Row("worker, 1 request", 1, calls="1")
    phases += [(direct, on_pipeline_thread(lambda: direct_call(direct_pipe, single, device))),
               (via_worker, lambda: asyncio.run(through_worker(engine, single, 1)))]
    if args.vanilla:
        pipe = vanilla_pipeline(loaded, args.scheduler)
        phases.append((Row("vanilla diffusers, 8 calls of 1", 8, calls="1+" * 7 + "1"),
                       on_pipeline_thread(lambda: sum(direct_call(pipe, [r], device) for r in requests))))
        phases.append((Row("vanilla diffusers, 1 call of 8", 8, calls="8"),
                       on_pipeline_thread(lambda: direct_call(pipe, requests, device))))
    for _row, fn in phases:  # warm every path once (new pipeline objects, new batch shapes)
        fn()
    for round_ in range(args.repeats):
        for row, fn in phases:
            memory.reset()
            row.seconds.append(fn())
            row.peaks.append(memory.peak_mib())
        print(f"  round {round_ + 1}/{args.repeats} done", file=sys.stderr)
    rows = [row for row, _ in phases]
    for row in rows:
        for b in batches:
            if row.name.endswith(f"max_batch_size={b}"):
                row.calls = "+".join(map(str, batch_calls[b][-1]))

    baseline = next(r for r in rows if r.name.endswith("max_batch_size=1"))
    base_rate = baseline.images / baseline.median
    lines = [
        f"### {args.arch} {args.size}x{args.size}, {args.steps} steps, {args.scheduler}, {device.type} "
        f"{str(loaded.dtype).replace('torch.', '')}, median of {args.repeats}",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line(device)}",
        "",
        f"| run | images | pipeline calls (images each) | median s | images/s | vs one at a time | {memory.label} |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rate = row.images / row.median
        lines.append(f"| {row.name} | {row.images} | {row.calls} | {row.median:.2f} | {rate:.2f} | "
                     f"{rate / base_rate:.2f}x | {statistics.median(row.peaks):.0f} |")
    lines += ["", f"Worker overhead for one request: {via_worker.median / direct.median:.3f}x the direct call "
              f"({(via_worker.median - direct.median) * 1000:+.0f} ms)."]
    for b in batches:
        if b > 1:
            row = next(r for r in rows if r.name.endswith(f"max_batch_size={b}"))
            lines.append(f"Batching speed-up with max_batch_size={b}: {baseline.median / row.median:.2f}x.")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with args.output.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
