"""Where one LC meta-step's time and memory go, and one FT evaluation example's, by torch.profiler.

    python benchmarks/profile_step.py --model smollm2-135m --batch 1 --out benchmarks/profile-smollm2.md

Profiles, after `--warmup` unprofiled runs of each: (1) MetaTrainer.outer_step on `--batch` Character
Description examples (LC objective, second order, gold answer standing in for the teacher's answer, as in
meta_step.py; with --teacher cached, the default, the teacher's targets are prepared first and its copy released,
as meta-train does), and (2) evaluate_finetuned on one triplet (inner step on the context, then scoring and the
greedy answer with the stepped weights). For each it reports, from the profiler's CPU events of this thread:

  * categories (matmul, attention, softmax, loss, normalization, activation, embedding/indexing, elementwise,
    reduction, copy/alloc, views, optimizer, autograd bookkeeping, other): summed *self* CPU time (time inside
    the op, not its children) and the op's self CPU memory (bytes allocated minus freed inside the op; positive
    = tensors it created and handed on, e.g. activations kept for backward);
  * phases found without labels: forward (and anything outside the autograd engine), the autograd engine (the
    inner step's gradient with create_graph and the backward through the step both run there), and torch's own
    Optimizer.* labels (Adam step, zero_grad) — plus 'outside ops' = wall time of the step minus all self time
    (Python between ops);
  * the top operators by self CPU time and by self CPU memory (ops run by an Optimizer.* label are listed
    apart, as "<op> (in optimizer)", and count in the optimizer category);
  * every torch.profiler.record_function label seen (the library's phase labels once it has them: teacher
    forward, inner forward, ...): calls, inclusive CPU time, share of the wall time, and the categories inside.
Plus the wall time and the peak-RSS growth (VmHWM) of one unprofiled run. Self CPU times are wall time on the
calling thread (intra-op threads work inside an op's interval); shares are of the profiled wall time, which
the profiler inflates by a few percent. Writes markdown to --out and the same numbers as JSON next to it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadwatch  # noqa: E402
import meta_step  # noqa: E402

SCHEMA = "promptstep-benchmark/profile_step/1"

# First matching rule wins; names are aten op names without the "aten::" prefix. With eager attention (the
# library's default) the score and value products are batched matmuls (bmm) and the linear layers and LM head
# are mm/addmm, forward and backward alike; a fused kernel shows up as "attention (fused)".
CATEGORIES = [
    ("attention (fused)", r"scaled_dot_product|flash_attention|efficient_attention|_sdpa"),
    ("matmul: attention (bmm)", r"^(bmm|baddbmm)$"),
    ("matmul: linear layers (mm)", r"^(mm|addmm|matmul|linear|addmv|mv|dot|einsum|_addmm_activation|outer)$"),
    ("softmax", r"softmax"),
    ("loss", r"kl_div|cross_entropy|nll_loss|mse_loss|binary_cross"),
    ("normalization", r"layer_norm|rms_norm|group_norm|batch_norm"),
    ("activation", r"^(silu|gelu|relu|tanh|sigmoid|softplus|elu|hardswish|mish)"),
    ("embedding/indexing", r"embedding|index|gather|scatter|take|masked_select|nonzero|argmax|topk|sort|isin"),
    ("optimizer", r"^_foreach_|addcdiv|addcmul|lerp|_fused_adam"),
    ("reduction", r"^(sum|mean|max|min|amax|amin|norm|linalg_vector_norm|var|std|prod|all|any|cumsum|logsumexp)"),
    ("copy/alloc", r"^(copy_|to|_to_copy|clone|contiguous|cat|stack|empty|empty_like|empty_strided|zeros|zeros_like|"
                   r"ones|ones_like|full|full_like|fill_|zero_|new_|resize_|detach_|lift|tensor|arange|tril|triu|"
                   r"_local_scalar_dense|item|scalar_tensor|constant_pad_nd|pad)"),
    ("views", r"^(view|reshape|_unsafe_view|as_strided|expand|expand_as|transpose|permute|t|slice|select|unsqueeze|"
              r"squeeze|split|split_with_sizes|narrow|chunk|unbind|flatten|unflatten|alias|detach|_reshape_alias|"
              r"view_as|numpy_T|unfold|movedim|diagonal|_unsafe_split)"),
    ("elementwise", r"^(add|sub|mul|div|rsub|pow|rsqrt|sqrt|exp|log|neg|abs|sign|reciprocal|sin|cos|square|"
                    r"maximum|minimum|eq|ne|lt|le|gt|ge|bitwise|logical|__and__|__or__|masked_fill|cumprod|"
                    r"floor|ceil|round|erf|where|clamp|threshold)"),
]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
PHASE_OPTIMIZER = "optimizer (torch's Optimizer.* labels)"
PHASE_ENGINE = "autograd engine (inner gradient with graph + backward through the step)"
PHASE_FORWARD = "forward and other (outside the autograd engine)"


def category(name: str) -> str:
    if name.startswith(("autograd::", "torch::autograd::")) or name.endswith(("Backward0", "Backward1", "Backward")):
        return "autograd bookkeeping"
    if not name.startswith("aten::"):
        return "other"
    op = name[len("aten::") :]
    for label, pattern in _COMPILED:
        if pattern.search(op):
            return label
    return "other"


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _phase(event) -> str:
    names = [a.name for a in _ancestors(event)] + [event.name]
    if any(n.startswith("Optimizer.") for n in names):
        return PHASE_OPTIMIZER
    if any(n.startswith("autograd::engine::evaluate_function") for n in names):
        return PHASE_ENGINE
    return PHASE_FORWARD


def _is_label(event) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or event.name.startswith("Optimizer.")


def analyse(events, wall_s: float, top: int) -> dict:
    """Totals by category, phase, operator and record_function label from the profiler's function events."""
    main = defaultdict(int)
    for e in events:
        main[e.thread] += 1
    thread = max(main, key=main.get) if main else None  # the calling thread: it has nearly all events
    events = [e for e in events if e.thread == thread and e.name != "[memory]"]
    ms = 1e-3  # profiler times are microseconds
    cats: dict = defaultdict(lambda: {"self_cpu_ms": 0.0, "calls": 0, "self_mem_mb": 0.0})
    phases: dict = defaultdict(float)
    ops: dict = defaultdict(lambda: {"self_cpu_ms": 0.0, "calls": 0, "self_mem_mb": 0.0})
    labels: dict = defaultdict(lambda: {"calls": 0, "cpu_ms": 0.0, "self_mem_mb": 0.0,
                                        "categories_ms": defaultdict(float)})
    total_self = 0.0
    for e in events:
        self_ms, mem = e.self_cpu_time_total * ms, e.self_cpu_memory_usage / 2**20
        total_self += self_ms
        phase = _phase(e)
        phases[phase] += self_ms
        if _is_label(e):
            cat = "python inside labels"
            outer = [a for a in _ancestors(e) if a.name == e.name]
            if not outer:  # a label nested in itself counts once
                labels[e.name]["calls"] += 1
                labels[e.name]["cpu_ms"] += e.cpu_time_total * ms
        else:  # everything an Optimizer.* label runs (Adam's mul_, sqrt, ...) counts as optimizer
            in_optimizer = phase == PHASE_OPTIMIZER
            key = f"{e.name} (in optimizer)" if in_optimizer else e.name
            cat = "optimizer" if in_optimizer else category(e.name)
            ops[key]["self_cpu_ms"] += self_ms
            ops[key]["calls"] += 1
            ops[key]["self_mem_mb"] += mem
            ops[key]["category"] = cat
        cats[cat]["self_cpu_ms"] += self_ms
        cats[cat]["calls"] += 1
        cats[cat]["self_mem_mb"] += mem
        for name in {a.name for a in _ancestors(e) if _is_label(a)}:
            labels[name]["categories_ms"][cat] += self_ms
            labels[name]["self_mem_mb"] += mem
    wall_ms = wall_s * 1e3
    outside = max(0.0, wall_ms - total_self)

    def share(value: float) -> float:
        return round(value / wall_ms, 4) if wall_ms else 0.0

    def rounded(d: dict) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}

    categories = sorted(({"category": k, **rounded(v), "share": share(v["self_cpu_ms"])} for k, v in cats.items()),
                        key=lambda r: -r["self_cpu_ms"])
    categories.append({"category": "outside ops (Python between ops)", "self_cpu_ms": round(outside, 3),
                       "calls": 0, "self_mem_mb": 0.0, "share": share(outside)})
    op_rows = [{"op": k, **rounded(v), "share": share(v["self_cpu_ms"])} for k, v in ops.items()]
    label_rows = []
    for name, v in sorted(labels.items(), key=lambda kv: -kv[1]["cpu_ms"]):
        inside = sorted(v["categories_ms"].items(), key=lambda kv: -kv[1])
        label_rows.append({"label": name, "calls": v["calls"], "cpu_ms": round(v["cpu_ms"], 3),
                           "share": share(v["cpu_ms"]), "self_mem_mb": round(v["self_mem_mb"], 3),
                           "categories_ms": {k: round(t, 3) for k, t in inside}})
    return {
        "wall_ms": round(wall_ms, 3),
        "categories": categories,
        "phases": [{"phase": k, "self_cpu_ms": round(v, 3), "share": share(v)}
                   for k, v in sorted(phases.items(), key=lambda kv: -kv[1])],
        "top_ops_by_time": sorted(op_rows, key=lambda r: -r["self_cpu_ms"])[:top],
        "top_ops_by_memory": sorted(op_rows, key=lambda r: -r["self_mem_mb"])[:top],
        "labels": label_rows,
    }


def measure(name: str, fn, warmup: int, top: int) -> dict:
    """Warm up, time one unprofiled run with its peak-RSS growth, then profile one run."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    gc.collect()
    before = loadwatch.rss_mb()
    reset = loadwatch.reset_peak()
    began = time.perf_counter()
    fn()
    plain_s = time.perf_counter() - began
    peak = loadwatch.peak_mb()
    gc.collect()
    watch = loadwatch.LoadWatch()
    first = watch.sample()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        began = time.perf_counter()
        fn()
        profiled_s = time.perf_counter() - began
    load = watch.between(first, watch.sample())
    result = analyse(prof.events(), profiled_s, top)
    return {"name": name, "unprofiled_s": round(plain_s, 5), "profiled_s": round(profiled_s, 5),
            "rss_before_mb": round(before, 1) if before else None,
            "peak_extra_mb": round(peak - before, 1) if reset and before else None, "load": load, **result}


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    v, m = report["versions"], report["machine"]
    lines = [f"# Profile: {report['model']}, LC meta-step (batch {report['batch']}, teacher targets "
             f"{report.get('teacher', 'live')}) and one FT example", "",
             f"{m['cpu_model']}, {v['threads']} threads, torch {v['torch']}, transformers {v['transformers']}, "
             f"malloc {report.get('malloc', 'default')}; "
             f"load before: load average {report['load_before']['loadavg']}, other processes "
             f"{report['load_before']['others_cores']} cores" + (" — **BUSY**: " + "; ".join(report["busy_reasons"])
                                                                   if report["busy"] else " (quiet)"), ""]
    for section in report["sections"]:
        lines += [f"## {section['title']}", "",
                  f"Unprofiled: {section['unprofiled_s']:.4g} s, peak RSS +{section['peak_extra_mb']} MB over "
                  f"{section['rss_before_mb']} MB; profiled: {section['profiled_s']:.4g} s "
                  f"(other processes {section['load']['others_cores']} cores meanwhile).", "",
                  "### By category (self CPU time)", ""]
        lines += _table(["category", "self CPU ms", "share", "calls", "self CPU mem MB"],
                        [[c["category"], f"{c['self_cpu_ms']:.1f}", f"{c['share']:.1%}", c["calls"],
                          f"{c['self_mem_mb']:.1f}"] for c in section["categories"]])
        lines += ["", "### By phase (automatic, without library labels)", ""]
        lines += _table(["phase", "self CPU ms", "share"],
                        [[p["phase"], f"{p['self_cpu_ms']:.1f}", f"{p['share']:.1%}"] for p in section["phases"]])
        for key, title in (("top_ops_by_time", "self CPU time"), ("top_ops_by_memory", "self CPU memory")):
            lines += ["", f"### Top operators by {title}", ""]
            lines += _table(["operator", "category", "calls", "self CPU ms", "share", "self CPU mem MB"],
                            [[o["op"], o["category"], o["calls"], f"{o['self_cpu_ms']:.1f}", f"{o['share']:.1%}",
                              f"{o['self_mem_mb']:.1f}"] for o in section[key]])
        lines += ["", "### record_function labels", ""]
        if section["labels"]:
            lines += _table(["label", "calls", "CPU ms (inclusive)", "share", "self CPU mem MB inside", "top inside"],
                            [[lab["label"], lab["calls"], f"{lab['cpu_ms']:.1f}", f"{lab['share']:.1%}",
                              f"{lab['self_mem_mb']:.1f}",
                              ", ".join(f"{k} {t:.0f} ms" for k, t in list(lab["categories_ms"].items())[:3])]
                             for lab in section["labels"]])
        else:
            lines.append("none found")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=1, help="examples in the profiled outer step")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--top", type=int, default=15, help="operators listed per table")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="FT example: greedy answer length cap")
    parser.add_argument("--teacher", choices=("cached", "live"), default="cached",
                        help="LC teacher targets: cached (prepared before, teacher copy released) or live")
    meta_step.add_malloc_argument(parser)
    parser.add_argument("--probe-s", type=float, default=2.0)
    parser.add_argument("--out", required=True, help="markdown report; the JSON goes to the same path with .json")
    parser.add_argument("--json", help="JSON path (default: --out with the suffix .json)")
    args = parser.parse_args()
    if args.batch < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("need --batch >= 1, --threads >= 1, --warmup >= 0")
    meta_step.apply_malloc(args.malloc)
    watch = loadwatch.LoadWatch()
    before = watch.probe(args.probe_s)
    torch, lib, model, tokenizer, examples = meta_step._setup(args.model, args.batch, args.threads)
    trainer = lib.MetaTrainer(model, tokenizer, lib.MetaOptions(objective="lc", inner_lr=meta_step.INNER_LR,
                                                                batch_size=args.batch, teacher_targets=args.teacher))
    trainer.prepare_targets(examples, progress=False)  # cached: targets on disk, teacher copy released
    _, test, _ = lib.generate("character", n_train=1, n_test=1, seed=0)
    from promptstep.evaluate import EvalOptions, evaluate_finetuned

    eval_options = EvalOptions(settings=("ft",), lrs=(meta_step.INNER_LR,), max_new_tokens=args.max_new_tokens,
                               fmt=lib.Format())
    sections = [
        {"title": f"LC meta-step: MetaTrainer.outer_step, batch {args.batch}",
         **measure("meta_step", lambda: trainer.outer_step(examples), args.warmup, args.top)},
        {"title": "FT evaluation of one triplet: evaluate_finetuned (step, then scoring and generation with the "
                  "stepped weights)",
         **measure("ft_example", lambda: evaluate_finetuned(model, tokenizer, test[:1], eval_options,
                                                            progress=False), args.warmup, args.top)},
    ]
    reasons = loadwatch.busy_reasons(before, [{**s["load"], "label": s["name"]} for s in sections
                                              if s["load"]["window_s"] >= meta_step.MIN_WINDOW_S],
                                     loadwatch.MAX_LOAD1, loadwatch.MAX_OTHERS_CORES)
    report = {"schema": SCHEMA, "model": args.model, "batch": args.batch, "teacher": args.teacher,
              "malloc": args.malloc,
              "teacher_resident": trainer.teacher is not None, "machine": loadwatch.machine(),
              "versions": meta_step.versions(torch), "load_before": before, "busy": bool(reasons),
              "busy_reasons": reasons, "context_tokens": [len(e.context_ids) for e in examples],
              "sections": sections}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report))
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    for section in sections:
        print(f"{section['name']}: {section['unprofiled_s']:.4g} s, +{section['peak_extra_mb']} MB; labels: "
              + (", ".join(f"{lab['label']} {lab['cpu_ms']:.1f} ms x{lab['calls']}" for lab in section["labels"])
                 or "none"))
    print(f"wrote {out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
