"""``bench timing --pack N``: what packing N runs on one device costs, three ways.

``processes`` (:func:`packing`, the default): N processes at once, as ``bench run --jobs N`` runs
them; ``streams`` (:func:`packing_streams`): N copies of a step in one process in lockstep, each
captured step replayed on its own CUDA stream; ``fused`` (:func:`packing_fused`): N runs fused
into one network (bench/fused.py). Each reports ms per iteration alone and packed and their
ratio, the time an epoch of the N runs takes packed over one run's epoch alone: a ratio below N
means packing beats running the runs one after another (issue 8's target: at most 2 for 4 runs
of ResNet-32 on an H100). The steps are :func:`bench.timing.build_step`'s.
"""

from __future__ import annotations

import contextlib
import time

from bench.timing import RoundRobin, Timer, _warm_up, build_step

PACK_MODES = ("processes", "streams", "fused")
PACK_TEXT = {  # the table's footnote per --pack-mode
    "processes": "packed = {n} processes at once on the same device (bench run --jobs N), the slowest one's "
                 "ms/iter (the epoch of the N runs ends with it); ",
    "streams": "packed = {n} copies of the step in this process, in lockstep, {streams} (not yet how bench run "
               "packs); ",
    "fused": "packed = {n} runs horizontally fused into one network (grouped convolutions; bench/fused.py; "
             "runs layout with channels_last, rows layout when contiguous), one step of each per iteration, timed "
             "in turns with the run alone (as bench run --fuse N trains seeds); ",
}


def _result(alone_ms: float, packed_ms: float, *, mode: str, jobs: int, iters: int, device, model_name: str,
            batch: int, graph: bool, precision: str, second_order: str, ratio: float | None = None, **extra) -> dict:
    """One packed measurement's row (what ``--json`` prints): ms per iteration alone and packed,
    their ratio (unless given: the fused one's is the median of paired rounds) and the setting."""
    from bench.capture import searches_conv_algorithms

    return dict(alone_ms_per_iter=alone_ms, packed_ms_per_iter=packed_ms, jobs=jobs,
                ratio=packed_ms / alone_ms if ratio is None else ratio, mode=mode, iters=iters, device=str(device),
                model=model_name, batch_size=batch, graph=graph, precision=precision, second_order=second_order,
                cudnn_benchmark=searches_conv_algorithms(device), **extra)


PACK_TIMEOUT_S = 1800.0  # for one whole packed measurement (start, warm-up, timed iterations)


def _packed_worker(name, kwargs, threads, cudnn_benchmark, iters, warmup, barrier, queue):
    """One of the packed processes: build the step, warm up, wait for the others, time ``iters``.
    Puts ``("ok", (ms per iteration, how the step ran: captured or eager))``, or ``("error",
    reason)`` after breaking the barrier so that the others stop waiting."""
    try:
        import torch

        from bench.capture import search_conv_algorithms
        from bench.cpu import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(threads)
        search_conv_algorithms(kwargs["device"], cudnn_benchmark)
        step, _ = build_step(name, **kwargs)
        device = torch.device(kwargs["device"])
        timer = Timer(device)
        _warm_up(step, warmup)
        barrier.wait(timeout=PACK_TIMEOUT_S)
        t0 = timer.now()
        for _ in range(iters):
            step()
        queue.put(("ok", (1000.0 * (timer.now() - t0) / iters, step.graphed.mode)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()
        queue.put(("error", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"))


def _packed_results(name: str, procs, queue) -> list[tuple[float, str]]:
    """Each packed process's ms per iteration and step mode; a BenchError (all of them stopped) as
    soon as one fails or dies (killed, out of memory) or the measurement outlasts PACK_TIMEOUT_S."""
    import queue as queues

    from bench.errors import BenchError

    times, deadline = [], time.monotonic() + PACK_TIMEOUT_S
    try:
        while len(times) < len(procs):
            try:
                kind, value = queue.get(timeout=2.0)
            except queues.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(f"a packed {name} process died (exit code {dead[0]})") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"packed {name} processes took over {PACK_TIMEOUT_S:g} s") from None
                continue
            if kind == "error":
                raise BenchError(f"a packed {name} process failed: {value}")
            times.append(value)
    finally:
        for proc in procs:
            if len(times) < len(procs) and proc.is_alive():
                proc.terminate()
            proc.join()
    return times


def packing(name: str, jobs: int, *, model_name: str, batch: int, device, iters: int = 50, warmup: int = 5,
            graph: bool = True, precision: str = "fp32", seed: int = 0, second_order: str = "jvp",
            channels_last: bool | None = None) -> dict:
    """ms per iteration of ``name`` in one process alone and in each of ``jobs`` processes running
    at once on the same device (``bench run --jobs N``'s packing), and their ratio: the time an
    epoch takes packed over the time it takes alone. On CPU each process gets cores / N threads,
    as ``--jobs`` gives them; alone it gets all the cores."""
    import multiprocessing

    import torch

    from bench.capture import searches_conv_algorithms
    from bench.executors import available_cores, mps_running

    device = torch.device(device)
    ctx = multiprocessing.get_context("spawn")
    cores = available_cores()
    kwargs = dict(model_name=model_name, batch=batch, device=str(device), seed=seed,
                  graph=graph and device.type == "cuda", precision=precision, second_order=second_order,
                  channels_last=channels_last)
    cudnn_benchmark = searches_conv_algorithms(device)  # the workers do as this process
    out, modes = {}, set()
    for label, n in (("alone", 1), ("packed", jobs)):
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        threads = max(1, cores // n) if device.type == "cpu" else 1
        procs = [ctx.Process(target=_packed_worker, args=(name, kwargs, threads, cudnn_benchmark, iters, warmup,
                                                                  barrier, queue))
                 for _ in range(n)]
        for proc in procs:
            proc.start()
        results = _packed_results(name, procs, queue)
        out[f"{label}_ms_per_iter"] = max(ms for ms, _ in results)  # the N runs' epoch ends with the slowest
        out[f"{label}_ms_per_iter_each"] = [round(ms, 3) for ms, _ in results]
        modes.update(mode for _, mode in results)
    return _result(out["alone_ms_per_iter"], out["packed_ms_per_iter"], mode="processes", jobs=jobs, iters=iters,
                   device=device, model_name=model_name, batch=batch, graph=kwargs["graph"], precision=precision,
                   second_order=second_order, mps=device.type == "cuda" and mps_running(),
                   packed_ms_per_iter_each=out["packed_ms_per_iter_each"], modes=sorted(modes))


def packing_streams(name: str, jobs: int, *, model_name: str, batch: int, device, iters: int = 50,
                    warmup: int = 5, graph: bool = True, precision: str = "fp32", seed: int = 0,
                    second_order: str = "jvp", channels_last: bool | None = None) -> dict:
    """Lockstep packing in one process: ms per iteration of one copy of step ``name`` alone, and
    per lockstep iteration of ``jobs`` copies (seeds ``seed`` ... ``seed + jobs - 1``, as the seeds
    of one grid cell) that each take one step, each copy's captured step replayed on its own CUDA
    stream. Replays on separate streams of one process can run their kernels at the same time
    without NVIDIA MPS, which the ``processes`` packing needs for that. The ratio is the epoch-time
    cost, as for :func:`packing`. On CPU the copies run one after the other (no streams)."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    kwargs = dict(model_name=model_name, batch=batch, device=device, graph=graph and cuda, precision=precision,
                  second_order=second_order, channels_last=channels_last)
    steps = [build_step(name, seed=seed + k, **kwargs)[0] for k in range(jobs)]
    timer = Timer(device)
    for step in steps:
        _warm_up(step, warmup)
    streams = [torch.cuda.Stream(device) if cuda else None for _ in steps]
    timer.now()  # synchronises the device: the warm-up's work is done before the streams take over

    def advance(copies):
        for step, stream in zip(steps[:copies], streams):
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                step()

    out = {}
    for label, copies in (("alone", 1), ("packed", jobs)):
        advance(copies)  # the streams' first use out of the timed region
        t0 = timer.now()
        for _ in range(iters):
            advance(copies)
        out[f"{label}_ms_per_iter"] = 1000.0 * (timer.now() - t0) / iters
    return _result(out["alone_ms_per_iter"], out["packed_ms_per_iter"], mode="streams", jobs=jobs, iters=iters,
                   device=device, model_name=model_name, batch=batch, graph=kwargs["graph"], precision=precision,
                   second_order=second_order, modes=sorted({s.graphed.mode for s in steps}))


def packing_fused(name: str, jobs: int, *, model_name: str, batch: int, device, iters: int = 50, warmup: int = 5,
                  graph: bool = True, precision: str = "fp32", seed: int = 0, second_order: str = "jvp",
                  channels_last: bool | None = None) -> dict:
    """Fused packing: ms per iteration of step ``name`` for one run alone (as training runs it) and
    for ``jobs`` runs horizontally fused into one network (bench/fused.py; seeds ``seed`` ...
    ``seed + jobs - 1``, one step of every run per iteration), timed in turns
    (:class:`bench.timing.RoundRobin`). The ratio is the epoch-time cost of the ``jobs`` runs fused over one run
    alone, as for :func:`packing`. Both in ``channels_last`` on CUDA (the fused classifier in the
    runs layout), unless ``--memory-format contiguous`` (then the rows layout)."""
    import torch

    device = torch.device(device)
    kwargs = dict(model_name=model_name, batch=batch, device=device, seed=seed, graph=graph and device.type == "cuda",
                  precision=precision, second_order=second_order)
    steps = {"alone": build_step(name, channels_last=channels_last, **kwargs)[0],
             "packed": build_step(name, runs=jobs, channels_last=channels_last, **kwargs)[0]}
    for step in steps.values():
        _warm_up(step, warmup)
    timed = RoundRobin(steps, Timer(device))
    for _ in range(iters):
        timed.round()
    return _result(timed.median("alone"), timed.median("packed"), mode="fused", jobs=jobs, iters=iters, device=device,
                   model_name=model_name, batch=batch, graph=kwargs["graph"], precision=precision,
                   second_order=second_order, ratio=timed.ratio("packed", "alone"),
                   modes=sorted({s.graphed.mode for s in steps.values()}))


def measure(mode: str, name: str, jobs: int, **kwargs) -> dict:
    """The ``--pack-mode`` ``mode`` measurement of step ``name`` packed ``jobs`` ways."""
    return {"processes": packing, "streams": packing_streams, "fused": packing_fused}[mode](name, jobs, **kwargs)


def render(rows: dict, args, device, channels_last: bool) -> str:
    """The ``--pack`` table (step, ms per iteration alone and packed, their ratio) and its footnote."""
    from tabulate import tabulate

    from bench.executors import mps_running

    cuda = device.type == "cuda"
    table = tabulate([[k, f"{r['alone_ms_per_iter']:.2f}", f"{r['packed_ms_per_iter']:.2f}", f"{r['ratio']:.2f}",
                       ", ".join(r.get("modes", ["—"]))] for k, r in rows.items()],
                     headers=["step", "alone ms/iter", f"{args.pack} packed, ms/iter each", "epoch time ratio",
                              "steps ran"],
                     tablefmt="github", disable_numparse=True)
    layout = "channels_last" if channels_last else "contiguous"
    return (f"{table}\n\n{args.model}, batch {args.batch_size}, {device}, {args.precision}, {layout}"
            f"{', cudnn.benchmark' if cuda and args.cudnn_benchmark else ''}"
            f"{(', NVIDIA MPS ' + ('running' if mps_running() else 'not running')) if cuda else ''}; "
            + PACK_TEXT[args.pack_mode].format(n=args.pack, streams="each replayed on its own CUDA stream"
                                               if cuda else "one after the other (streams: CUDA only)")
            + "a ratio below N means packing N runs beats running them one after another "
            "(the suite's H100 target: at most 2 for 4 runs). steps ran: captured (CUDA graphs) or eager, alone "
            "and packed; 'captured, eager' means some ran eagerly (a capture failed: its line is above), so the "
            "ratio compares unlike steps.")
