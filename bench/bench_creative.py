"""Benchmark Vary (img2img) and Upscale (hires fix) next to text-to-image, and the memory they add.

Not a test (timings depend on the machine); run it by hand and paste the table into bench/RESULTS.md:

    .venv/bin/python bench/bench_creative.py --arch tiny --size 256 --steps 20 --repeats 3 --threads 1

(a) throughput: 8 jobs from 8 members through ``GenerationWorker`` for each kind — text-to-image, Vary Subtle
    (img2img at ``vary_subtle_strength``), Vary Strong, Upscale (x``upscale_factor`` by hires fix at
    ``upscale_strength``) — with ``max_batch_size`` 4 vs 1: images/s (median of ``--repeats`` rounds after a
    warm-up round) and the batching speed-up. img2img runs ``int(steps * strength)`` steps, an upscale at the
    bigger size, so the kinds differ in work per image; the table says how many steps and pixels each ran.
(b) peak memory: two fresh processes, one generating text-to-image only (at the size and at the upscaled size, so
    both make images of the same sizes), one using all kinds; the second should stay within 10% of the first
    because img2img pipelines share the loaded modules (no second copy of the weights). RSS high-water mark on
    CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_generation import PIPELINE_THREAD, PROMPTS, PeakMemory, RecordingEngine, machine_line  # noqa: E402
from PIL import Image  # noqa: E402

from generation.engine import DiffusionEngine  # noqa: E402
from generation.loading import LoadedModel, resolve_device, resolve_dtype  # noqa: E402
from generation.request import (  # noqa: E402
    GenerationRequest,
    ImageParams,
    upscale_request,
    validate_request,
    variation_request,
)
from generation.settings import GenerationSettings  # noqa: E402
from generation.tiny import build_sd15_random_pipeline, build_tiny_pipeline  # noqa: E402
from generation.worker import GenerationWorker  # noqa: E402

KINDS = ("txt2img", "vary subtle", "vary strong", "upscale")


def build(arch: str, device_choice: str, dtype_choice: str) -> LoadedModel:
    device = resolve_device(device_choice)
    dtype = resolve_dtype(dtype_choice, device)
    pipe = (build_tiny_pipeline if arch == "tiny" else build_sd15_random_pipeline)(dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipe, name=arch, device=device, dtype=dtype)


def settings_for(args: argparse.Namespace) -> GenerationSettings:
    upscaled_side = int(args.size * 2)
    return GenerationSettings(model=args.arch, device=args.device, dtype=args.dtype, min_size=64,
                              max_size=max(1024, upscaled_side), max_pixels=max(1024 * 1024, upscaled_side ** 2),
                              max_steps=max(50, args.steps), max_upscale_pixels=upscaled_side ** 2,
                              default_scheduler=args.scheduler)


def parent_image(size: int, index: int) -> bytes:
    """A stand-in for a member's earlier result: a PNG with some structure (the content does not change timing)."""
    image = Image.new("RGB", (size, size), (40 + 20 * index, 90, 160))
    image.paste((230, 200, 40), (size // 4, size // 4, size // 2, size // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_jobs(kind: str, args: argparse.Namespace, settings: GenerationSettings, n: int = 8) -> \
        list[GenerationRequest]:
    jobs = []
    for i in range(n):
        size = args.size * 2 if kind == "txt2img at 2x" else args.size
        parent = validate_request(settings, prompt=PROMPTS[i % len(PROMPTS)], seed=1000 + i, steps=args.steps,
                                  width=size, height=size, requester_id=f"member-{i}")
        if kind.startswith("txt2img"):
            jobs.append(parent)
            continue
        image = parent_image(args.size, i)
        if kind == "upscale":
            jobs.append(upscale_request(settings, parent.params, 0, image, requester_id=f"member-{i}"))
        else:
            jobs.append(variation_request(settings, parent.params, 0, image, strong=kind == "vary strong",
                                          requester_id=f"member-{i}", seed=2000 + i))
    return jobs


async def through_worker(engine: RecordingEngine, jobs: list[GenerationRequest], max_batch: int) -> float:
    worker = GenerationWorker(engine, queue_size=64, max_batch_size=max_batch, previews=False,
                              executor=PIPELINE_THREAD)
    await worker.start()
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(worker.submit(job) for job in jobs))
        elapsed = time.perf_counter() - started
    finally:
        await worker.close()
    assert sum(len(r.images) for r in results) == len(jobs)
    return elapsed


def work_of(params: ImageParams) -> str:
    return f"{params.denoising_steps} steps at {params.width}x{params.height}"


def memory_child(args: argparse.Namespace) -> int:
    """One fresh process: the kinds in ``--memory-kinds``, twice each, then print the peak as JSON."""
    loaded = PIPELINE_THREAD.submit(build, args.arch, args.device, args.dtype).result()
    settings = settings_for(args)
    engine = RecordingEngine(DiffusionEngine(loaded, settings))
    memory = PeakMemory(loaded.device)
    memory.reset()  # building the weights is the same in both processes; measure from here
    for kind in args.memory_kinds.split(","):
        for _ in range(2):
            asyncio.run(through_worker(engine, make_jobs(kind, args, settings), args.memory_batch))
    print(json.dumps({"peak_mib": memory.peak_mib(), "label": memory.label}))
    return 0


def measure_memory(args: argparse.Namespace, kinds: Sequence[str]) -> tuple[float, str]:
    command = [sys.executable, __file__, "--arch", args.arch, "--size", str(args.size), "--steps", str(args.steps),
               "--device", args.device, "--dtype", args.dtype, "--scheduler", args.scheduler,
               "--memory-kinds", ",".join(kinds), "--memory-batch", "4"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return float(data["peak_mib"]), str(data["label"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto")
    parser.add_argument("--scheduler", default="euler_a")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1: stable numbers on a shared CPU)")
    parser.add_argument("--output", type=Path, help="also append the markdown to this file")
    parser.add_argument("--memory-kinds", help=argparse.SUPPRESS)  # internal: run as a memory-measuring child
    parser.add_argument("--memory-batch", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_kinds:
        return memory_child(args)

    started = time.perf_counter()
    loaded = PIPELINE_THREAD.submit(build, args.arch, args.device, args.dtype).result()
    settings = settings_for(args)
    engine = RecordingEngine(DiffusionEngine(loaded, settings))
    phases = []
    for kind in KINDS:
        jobs = make_jobs(kind, args, settings)
        for batch in (4, 1):
            phases.append((kind, batch, jobs, []))
    print(f"built {args.arch} in {time.perf_counter() - started:.1f}s; warming up", file=sys.stderr)
    for _kind, batch, jobs, _times in phases:
        asyncio.run(through_worker(engine, jobs, batch))
    for round_ in range(args.repeats):  # every phase once per round: background load hits all phases alike
        for _kind, batch, jobs, times in phases:
            times.append(asyncio.run(through_worker(engine, jobs, batch)))
        print(f"  round {round_ + 1}/{args.repeats} done", file=sys.stderr)

    print("measuring memory in fresh processes", file=sys.stderr)
    alone, label = measure_memory(args, ["txt2img", "txt2img at 2x"])
    together, _ = measure_memory(args, list(KINDS))

    device = loaded.device
    lines = [
        f"### Vary and Upscale: {args.arch} {args.size}x{args.size}, {args.steps} steps, {args.scheduler}, "
        f"{device.type} {str(loaded.dtype).replace('torch.', '')}, median of {args.repeats}",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line(device)}",
        "",
        "| kind | work per image | max_batch_size | median s (8 images) | images/s | batched vs one at a time |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    rates: dict[tuple[str, int], float] = {}
    for kind, batch, jobs, times in phases:
        rates[(kind, batch)] = len(jobs) / statistics.median(times)
    for kind, batch, jobs, times in phases:
        speedup = rates[(kind, batch)] / rates[(kind, 1)]
        lines.append(f"| {kind} | {work_of(jobs[0].params)} | {batch} | {statistics.median(times):.2f} | "
                     f"{rates[(kind, batch)]:.2f} | {speedup:.2f}x |")
    lines += ["", f"| process | {label} |", "| --- | ---: |",
              f"| text-to-image only ({args.size} and {args.size * 2} px) | {alone:.0f} |",
              f"| text-to-image + Vary Subtle + Vary Strong + Upscale | {together:.0f} |",
              "", f"All kinds used vs text-to-image alone: {together / alone:.3f}x "
              f"({together - alone:+.0f} MiB; goal: within 10%)."]
    text = "\n".join(lines)
    print(text)
    if args.output:
        with args.output.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
