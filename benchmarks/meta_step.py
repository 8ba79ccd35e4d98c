"""Time and peak memory of one outer meta-step (LC objective), promptstep's way and the paper's way.

    python benchmarks/meta_step.py --models tiny --batches 1,4,16 --out benchmarks/results.json
    python benchmarks/meta_step.py --models smollm2-135m --batches 1,4,16 --naive-max-batch 4 --out ...

Memory allocator: with --malloc keep (default) every measuring process first calls
promptstep.malloc.keep_freed_memory(), as the promptstep CLI does (glibc keeps freed blocks for reuse instead of
faulting fresh pages in for every large tensor); --malloc default leaves glibc's defaults.

LC teacher: with --teacher cached (default, what meta-train does) the teacher's answer distributions are prepared
before the steps and the frozen copy is released; --teacher live runs the teacher at every step (as before).

Modes (all on the same tokens: Character Description triplets, gold answer standing in for the teacher's
greedy answer, full-parameter inner step of lr 1e-3, one example per inner step):
  promptstep   MetaTrainer.outer_step: exact second order, one example at a time, outer gradient accumulated
  naive        the paper's way: one differentiable adapted copy per example, all kept alive, one backward of
               the mean loss (then the same clipping and Adam step)
  first-order  MetaTrainer.outer_step with first_order=True (gradients of the inner step treated as constants)
  plain        forward + backward of the context's LM loss and a forward of query + answer, per example, no
               inner step, no teacher, no optimizer step: what ordinary fine-tuning on those tokens costs

Time: for each (model, batch) one fresh process loads the model once and runs the modes side by side: after
`--warmup` untimed steps of each mode, `--repeats` rounds each time every mode once (the order rotates from
round to round, so drift hits every mode alike). Per mode: median, min, max, n of the step's wall time;
ratios (e.g. promptstep / plain) are taken round by round and reported the same way.

Memory: for each (model, mode, batch) a fresh process loads the model (and the teacher copy), tokenises, and
runs two steps, resetting the kernel's peak-RSS counter (VmHWM, via /proc/self/clear_refs) just before each.
first_step_peak_extra_mb = peak RSS during the first step - RSS just before it; steady_step_peak_extra_mb = the
same for the second step. Adam allocates its moments (2 x the parameters) in optimizer.step, after the graph
is freed, so they usually miss the first step's peak and sit under the second's: steady_step_peak_mb and
process_peak_mb (whole process, loading included) are what a training run actually needs. RSS is the whole
process (model, teacher copy, Python, allocator caches), in MB of 2^20 bytes.

Load: before the run the script watches the machine for `--probe-s` seconds; it refuses to measure (exit 3)
if the 1-min load average is above --max-load (0.5) or other processes plus hypervisor steal used more than
--max-others-cores (0.15) cores (--wait-quiet S: keep watching up to S seconds first); it watches again during
every measured section of at least 1 s and after the run.
A busy run is written only with --allow-busy (marked "busy": true); without it its rows go to <out>.busy.json
and the script exits 3. A failed cell makes the exit status 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadwatch  # noqa: E402

MODES = ("promptstep", "naive", "first-order", "plain")
SCHEMA = "promptstep-benchmark/meta_step/2"
MIN_WINDOW_S = 1.0  # measured sections shorter than this are too coarse (10 ms ticks) to judge the load by
INNER_LR = 1e-3


DEFINITIONS = {
    "step_s": "wall time of one whole outer step of the mode (time.perf_counter), after --warmup untimed steps; "
              "modes interleaved in rotating order within each round, one process per (model, batch)",
    "cpu_s": "CPU time of the whole process (time.process_time: user + system, all threads) during the same step; "
             "with --threads 1 it is the time the step kept a core busy, so it moves much less with the machine's "
             "load than wall time (memory-bandwidth and cache contention still reach it)",
    "cpu_ratios": "the ratios of cpu_s, round by round",
    "teacher_resident": "whether the frozen LC teacher copy was still in memory during the measured steps (False "
                        "with --teacher cached: the targets were prepared and the copy released)",
    "ratios": "per round, time of the first mode / time of the second in that same round; median, min, max over "
              "rounds; of_medians = ratio of the two modes' median times",
    "first_step_peak_extra_mb": "fresh process per (model, mode, batch): VmHWM after the first step (peak reset "
                                "by /proc/self/clear_refs just before it) - VmRSS just before it, MB of 2^20 bytes; "
                                "Adam's moments, allocated in optimizer.step after the graph is freed, usually "
                                "miss this peak",
    "steady_step_peak_extra_mb": "the same for the second step in that process (Adam's moments resident before it)",
    "process_peak_mb": "the whole process's peak RSS: loading, teacher copy and both steps",
    "others_cores": "CPU time of processes outside the measuring process tree on this process's CPUs (per-CPU "
                    "/proc/stat minus the tree's /proc/<pid>/stat) / wall time of the window; steal_cores: "
                    "hypervisor steal on those CPUs",
    "busy": "load average (1 min) before the run > max_load1_before, or others + steal > max_others_cores before, "
            "after, or during any measured section of at least min_window_s",
}


def add_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """The --malloc option every benchmark script takes."""
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="glibc malloc in the measuring processes: keep freed memory for reuse, as the promptstep "
                             "CLI does (promptstep.malloc), or glibc's default")


def apply_malloc(choice: str) -> None:
    """Set up the allocator as --malloc asks: 'keep' does what the promptstep CLI does before every command."""
    if choice == "keep":
        from promptstep.malloc import keep_freed_memory

        keep_freed_memory()


def write_results(results: dict, out: str, allow_busy: bool) -> Path:
    """Write `results` as JSON to `out` or, if the machine was busy and busy figures were not asked for, beside it
    as <stem>.busy.json; the path written."""
    path = Path(out)
    if results["busy"] and not allow_busy:
        path = path.with_name(path.stem + ".busy.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def verdict(results: dict) -> str:
    """The last line of a report: whether the machine was quiet."""
    return "BUSY: " + "; ".join(results["busy_reasons"]) if results["busy"] else "quiet machine"


def library() -> SimpleNamespace:
    """The public entry points of promptstep the benchmarks call."""
    from promptstep.data.synthetic import generate
    from promptstep.formats import Format
    from promptstep.meta import MetaOptions, MetaTrainer, build_example
    from promptstep.models import load_model

    return SimpleNamespace(load_model=load_model, generate=generate, Format=Format, MetaOptions=MetaOptions,
                           MetaTrainer=MetaTrainer, build_example=build_example)


def versions(torch) -> dict:
    import transformers

    import promptstep

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "promptstep": getattr(promptstep, "__version__", None), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}}


# ------------------------------------------------------------------ inside a child process


def _setup(model_spec: str, batch: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lib = library()
    model, tokenizer = lib.load_model(model_spec)
    train, _, _ = lib.generate("character", n_train=max(batch, 1), n_test=1, seed=0)
    examples = [lib.build_example(tokenizer, t, lib.Format()) for t in train[:batch]]
    return torch, lib, model, tokenizer, examples


def _steps(torch, lib, model, tokenizer, examples, modes, teacher: str = "cached") -> tuple[dict, object]:
    """One zero-argument callable per mode, each doing one whole outer step of that mode on `examples`, and the
    main trainer. With teacher="cached" the teacher's targets are prepared first (as run_training does) and the
    frozen teacher copy is released; "live" keeps it and runs it at every step."""
    options = dict(objective="lc", inner_lr=INNER_LR, batch_size=len(examples), teacher_targets=teacher)
    trainer = lib.MetaTrainer(model, tokenizer, lib.MetaOptions(**options))
    trainers = [trainer]
    steps = {}
    if "promptstep" in modes:
        steps["promptstep"] = lambda: trainer.outer_step(examples)
    if "first-order" in modes:
        first = lib.MetaTrainer(model, tokenizer, lib.MetaOptions(**options, first_order=True),
                                teacher=trainer.teacher)
        trainers.append(first)
        steps["first-order"] = lambda: first.outer_step(examples)
    for each in trainers:  # a no-op for live targets
        each.prepare_targets(examples, progress=False)
    if "naive" in modes:
        params = list(trainer.params.values())
        # The trainer's own per-example loss (inner step with graph, then the KL to the teacher), but every
        # example's graph is kept until one backward of the mean.
        example_loss = getattr(trainer, "group_loss", None)
        example_loss = (lambda ex: trainer.group_loss([ex])) if example_loss else trainer.example_loss

        def naive() -> None:
            trainer.optimizer.zero_grad(set_to_none=True)
            losses = [example_loss(ex)[0] for ex in examples]
            (torch.stack(losses).sum() / len(examples)).backward(inputs=params)
            torch.nn.utils.clip_grad_norm_(params, trainer.options.clip)
            trainer.optimizer.step()

        steps["naive"] = naive
    if "plain" in modes:

        def plain() -> None:
            trainer.optimizer.zero_grad(set_to_none=True)
            for ex in examples:
                context = torch.tensor([list(ex.context_ids)])
                loss = model(input_ids=context, labels=context, use_cache=False).loss
                logits = model(input_ids=torch.tensor([list(ex.student_ids)]), use_cache=False).logits
                answer = torch.log_softmax(logits[0, -ex.n_answer - 1 : -1].float(), dim=-1)
                (loss + answer.sum() * 0).backward()

        steps["plain"] = plain
    return steps, trainer


def child_time(model_spec: str, batch: int, modes: list[str], repeats: int, warmup: int, threads: int,
               teacher: str = "cached") -> dict:
    """Side-by-side timing of `modes` in this process: warm-up, then `repeats` rotating rounds."""
    torch, lib, model, tokenizer, examples = _setup(model_spec, batch, threads)
    steps, trainer = _steps(torch, lib, model, tokenizer, examples, modes, teacher)
    for _ in range(warmup):
        for mode in modes:
            steps[mode]()
    watch = loadwatch.LoadWatch()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    rounds = []
    load_before, start = loadwatch.loadavg(), watch.sample()
    for r in range(repeats):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        first, round_times, round_cpu = watch.sample(), {}, {}
        for mode in order:
            gc.collect()
            began, began_cpu = time.perf_counter(), time.process_time()
            steps[mode]()
            round_times[mode] = time.perf_counter() - began
            round_cpu[mode] = time.process_time() - began_cpu
            times[mode].append(round_times[mode])
            cpu[mode].append(round_cpu[mode])
        rounds.append({"order": order, "times_s": {m: round(t, 5) for m, t in round_times.items()},
                       "cpu_s": {m: round(t, 5) for m, t in round_cpu.items()},
                       **watch.between(first, watch.sample())})
    load = {"loadavg_before": load_before, "loadavg_after": loadwatch.loadavg(), **watch.between(start, watch.sample())}
    result = {"kind": "time", "model": model_spec, "batch": batch, "teacher": teacher,
              "teacher_resident": trainer.teacher is not None,
              "context_tokens": [len(e.context_ids) for e in examples],
              "student_tokens": [len(e.student_ids) for e in examples], "modes": {}, "ratios": {}, "load": load,
              "rounds": rounds, "versions": versions(torch)}
    result["cpu_ratios"] = {}
    for mode in modes:
        result["modes"][mode] = {**loadwatch.spread(times[mode], 5), "times_s": [round(t, 5) for t in times[mode]],
                                 "cpu_s": loadwatch.spread(cpu[mode], 5)}
    pairs = [(m, "plain") for m in modes if m != "plain" and "plain" in modes]
    if "promptstep" in modes and "naive" in modes:
        pairs.append(("promptstep", "naive"))
    for num, den in pairs:
        per_round = [a / b for a, b in zip(times[num], times[den])]
        medians = result["modes"][num]["median"] / result["modes"][den]["median"]
        result["ratios"][f"{num}/{den}"] = {**loadwatch.spread(per_round, 3), "of_medians": round(medians, 3)}
        per_round_cpu = [a / b for a, b in zip(cpu[num], cpu[den])]
        result["cpu_ratios"][f"{num}/{den}"] = loadwatch.spread(per_round_cpu, 3)
    return result


def child_memory(model_spec: str, batch: int, mode: str, threads: int, teacher: str = "cached") -> dict:
    """Peak RSS growth of a first and a second `mode` step in this fresh process (see the module docstring)."""
    torch, lib, model, tokenizer, examples = _setup(model_spec, batch, threads)
    steps, trainer = _steps(torch, lib, model, tokenizer, examples, [mode], teacher)
    step = steps[mode]
    load_peak = loadwatch.peak_mb()
    gc.collect()
    watch = loadwatch.LoadWatch()
    out = {"kind": "memory", "model": model_spec, "mode": mode, "batch": batch, "teacher": teacher,
           "teacher_resident": trainer.teacher is not None, "load_peak_mb": load_peak}
    start = watch.sample()
    for name in ("first_step", "steady_step"):
        gc.collect()
        before = loadwatch.rss_mb()
        reset = loadwatch.reset_peak()
        began = time.perf_counter()
        step()
        out[f"{name}_s"] = round(time.perf_counter() - began, 5)
        peak = loadwatch.peak_mb()
        out[f"{name}_rss_before_mb"] = round(before, 1)
        out[f"{name}_peak_mb"] = round(peak, 1)
        out[f"{name}_peak_extra_mb"] = round(peak - before, 1) if reset else None
    out["peak_method"] = "VmHWM reset per step" if reset else "not available (no /proc/self/clear_refs)"
    out["rss_after_load_mb"] = out["first_step_rss_before_mb"]
    out["process_peak_mb"] = round(max(load_peak, out["first_step_peak_mb"], out["steady_step_peak_mb"]), 1)
    out["load"] = watch.between(start, watch.sample())
    out["versions"] = versions(torch)
    return out


# ------------------------------------------------------------------ the parent


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr.strip() or f"exit {proc.returncode}")[-600:]}
    return json.loads(lines[-1])


def _cells(args) -> tuple[list[dict], list[dict]]:
    """(timing specs, memory specs) for the requested grid."""
    side = {int(b) for b in args.side_batches.split(",") if b}
    memory_modes = set(MODES if args.memory_modes == "all" else [m for m in args.memory_modes.split(",") if m])
    timing, memory = [], []
    for model in [m for m in args.models.split(",") if m]:
        for batch in [int(b) for b in args.batches.split(",") if b]:
            modes = []
            for mode in [m for m in args.modes.split(",") if m]:
                if mode not in MODES:
                    raise SystemExit(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
                if (mode == "naive" and batch > args.naive_max_batch) or (
                        mode in ("plain", "first-order") and batch not in side):
                    continue
                modes.append(mode)
            if not modes:
                continue
            common = {"model": model, "batch": batch, "threads": args.threads, "teacher": args.teacher,
                      "malloc": args.malloc}
            timing.append({"kind": "time", **common, "modes": modes, "repeats": args.repeats, "warmup": args.warmup})
            memory += [{"kind": "memory", **common, "mode": mode} for mode in modes if mode in memory_modes]
    return timing, memory


def _markdown(results: dict) -> str:
    """The rows as a README-style table: one line per (model, mode), one column per batch."""
    batches = sorted({row["batch"] for row in results["timing"] + results["memory"]})
    memory = {(r["model"], r["mode"], r["batch"]): r for r in results["memory"] if "error" not in r}
    lines = ["| model | step | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for model in dict.fromkeys(r["model"] for r in results["timing"]):
        for mode in MODES:
            cells = []
            for b in batches:
                row = next((r for r in results["timing"] if r["model"] == model and r["batch"] == b), None)
                stats = (row or {}).get("modes", {}).get(mode)
                if not stats:
                    cells.append("")
                    continue
                text = f"{stats['median']:.3g} s [{stats['min']:.3g}-{stats['max']:.3g}, n={stats['n']}]"
                mem = memory.get((model, mode, b))
                if mem and mem.get("first_step_peak_extra_mb") is not None:
                    text += (f", +{mem['first_step_peak_extra_mb']:,.0f} MB (2nd step +"
                             f"{mem['steady_step_peak_extra_mb']:,.0f}, process peak {mem['process_peak_mb']:,.0f})")
                cells.append(text)
            if any(cells):
                lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    lines.append("\nRatios, round by round (median [min-max, n]):")
    for row in results["timing"]:
        for pair, stats in row.get("ratios", {}).items():
            line = (f"* {row['model']} batch {row['batch']}: {pair} = {stats['median']:.2f}x "
                    f"[{stats['min']:.2f}-{stats['max']:.2f}, n={stats['n']}]")
            cpu = row.get("cpu_ratios", {}).get(pair)
            if cpu:
                line += f"; CPU time {cpu['median']:.2f}x [{cpu['min']:.2f}-{cpu['max']:.2f}]"
            lines.append(line)
    return "\n".join(lines) + f"\n\n{verdict(results)}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--naive-max-batch", type=int, default=16, help="skip naive above this batch")
    parser.add_argument("--side-batches", default="1", help="batches at which plain and first-order run")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per (model, batch)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each mode before the rounds")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--teacher", choices=("cached", "live"), default="cached",
                        help="LC teacher targets: cached (prepared before the steps, teacher copy released, as "
                             "meta-train does) or live (the frozen teacher runs at every step)")
    add_malloc_argument(parser)
    parser.add_argument("--memory-modes", default="all",
                        help="modes that also get fresh-process memory cells: all, none, or a comma list")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--probe-s", type=float, default=3.0, help="seconds of watching the machine before/after")
    parser.add_argument("--max-load", type=float, default=loadwatch.MAX_LOAD1)
    parser.add_argument("--max-others-cores", type=float, default=loadwatch.MAX_OTHERS_CORES)
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before refusing, keep watching up to this many seconds for the machine to go quiet")
    parser.add_argument("--allow-busy", action="store_true", help="measure and write even on a busy machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        apply_malloc(spec.get("malloc", "keep"))
        if spec["kind"] == "time":
            row = child_time(spec["model"], spec["batch"], spec["modes"], spec["repeats"], spec["warmup"],
                             spec["threads"], spec.get("teacher", "cached"))
        else:
            row = child_memory(spec["model"], spec["batch"], spec["mode"], spec["threads"],
                               spec.get("teacher", "cached"))
        print(json.dumps(row))
        return 0
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("need --repeats >= 1, --warmup >= 0, --threads >= 1")
    timing, memory = _cells(args)
    watch = loadwatch.LoadWatch()
    deadline = time.time() + args.wait_quiet
    while True:
        before = watch.probe(args.probe_s)
        reasons = loadwatch.busy_reasons(before, [], args.max_load, args.max_others_cores)
        print(json.dumps({"load_before": before}), flush=True)
        if not reasons or time.time() >= deadline:
            break
        time.sleep(min(10.0, max(0.0, deadline - time.time())))
    if reasons and not args.allow_busy:
        print("refusing to measure on a busy machine: " + "; ".join(reasons) +
              " (wait for a quiet machine, or pass --allow-busy to get figures marked busy)", file=sys.stderr)
        return 3
    started = time.time()
    results: dict = {"schema": SCHEMA, "busy": False, "busy_reasons": [], "allow_busy": args.allow_busy,
                     "thresholds": {"max_load1_before": args.max_load, "max_others_cores": args.max_others_cores,
                                    "min_window_s": MIN_WINDOW_S},
                     "machine": loadwatch.machine(),
                     "code": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
                     "settings": {"objective": "lc", "inner_lr": INNER_LR, "teacher": args.teacher,
                                  "malloc": args.malloc,
                                  "repeats": args.repeats,
                                  "warmup": args.warmup, "threads": args.threads, "modes": args.modes.split(","),
                                  "side_batches": args.side_batches, "naive_max_batch": args.naive_max_batch,
                                  "memory_modes": args.memory_modes},
                     "definitions": DEFINITIONS, "load_before": before, "timing": [], "memory": []}
    during = []
    for spec in timing + memory:
        row = _run_child(spec)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
        results["timing" if spec["kind"] == "time" else "memory"].append(row)
        window = row.get("load", {})
        if window.get("window_s", 0) >= MIN_WINDOW_S:
            label = f"{row['model']} batch {row['batch']} {row.get('mode', 'timing')}"
            during.append({**window, "label": label})
    results["load_after"] = watch.probe(args.probe_s)
    results["wall_s"] = round(time.time() - started, 1)
    versions_seen = [r["versions"] for r in results["timing"] + results["memory"] if "versions" in r]
    results["versions"] = versions_seen[0] if versions_seen else None
    after = {**results["load_after"], "label": "after the run"}
    results["busy_reasons"] = loadwatch.busy_reasons(before, [*during, after], args.max_load,
                                                     args.max_others_cores)
    results["busy"] = bool(results["busy_reasons"])
    errors = [r for r in results["timing"] + results["memory"] if "error" in r]
    out = write_results(results, args.out, args.allow_busy)
    print(_markdown(results))
    print(f"wrote {out}")
    if errors:
        print(f"{len(errors)} cell(s) failed: " + "; ".join(e["error"].splitlines()[-1] for e in errors),
              file=sys.stderr)
        return 1
    if results["busy"] and not args.allow_busy:
        print("the machine got busy during the run: not writing " + args.out + " (rows kept in " + str(out) +
              "); " + "; ".join(results["busy_reasons"]), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
