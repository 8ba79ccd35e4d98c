"""FT evaluation per example, the library's path against the plain reference path, side by side on the same items,
with a check that both write the same records.

    python benchmarks/ft_eval.py --model smollm2-135m --n 20 --threads 1 --out benchmarks/ft-eval-smollm2.json

library    evaluate_finetuned: the stepped weights substituted for the model's (no copy in or out), one forward of
           query + gold answer for the scores and the start of greedy generation, decoding only past it
reference  tests/reference_paths.reference_ft_records (the path before issue 15): copy the stepped weights in,
           score with a forward of query + answer, generate with `generate` (its own forward of the query), copy
           the weights back

Items: the first --n test triplets of the Character Description task (seed 0), FT at --lr (default the library's
inner lr, 1e-3). After --warmup items of each path (untimed), every item is evaluated by both paths, the order
alternating from item to item so drift hits both alike. Per path: wall time and process CPU time per example
(mean ± SE, median, n); the speed-up per item (reference / library: median, min, max) and of the totals. The
records of the two paths are compared: every field equal except token accuracy and NLL (1e-5 relative).

Load: watched before, during and after, as meta_step.py does; a busy machine is refused (exit 3) unless
--allow-busy (the output is then marked "busy": true). Differing records make the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import loadwatch  # noqa: E402
import meta_step  # noqa: E402
from meta_step import MIN_WINDOW_S, versions  # noqa: E402

SCHEMA = "promptstep-benchmark/ft_eval/1"


def _stats(values: list[float]) -> dict:
    from promptstep.metrics import mean_se

    mean, se = mean_se(values)
    return {**loadwatch.spread(values, 5), "mean": round(mean, 5), "se": round(se, 5)}


def run(args) -> dict:
    import torch

    from promptstep.data.synthetic import generate
    from promptstep.evaluate import EvalOptions, evaluate_finetuned
    from promptstep.models import load_model
    from promptstep.updates import InnerStep
    from reference_paths import record_differences, reference_ft_records

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    _, test, _ = generate("character", n_train=1, n_test=args.n + args.warmup, seed=0)
    warm, items = test[: args.warmup], test[args.warmup : args.warmup + args.n]
    options = EvalOptions(settings=("ft",), inner=InnerStep(lr=args.lr), max_new_tokens=args.max_new_tokens)
    paths = {"library": lambda ts: evaluate_finetuned(model, tokenizer, ts, options, progress=False),
             "reference": lambda ts: reference_ft_records(model, tokenizer, ts, options)}
    for triplet in warm:
        for path in paths.values():
            path([triplet])
    watch = loadwatch.LoadWatch()
    start = watch.sample()
    rows, records = [], {name: [] for name in paths}
    for index, triplet in enumerate(items):
        order = list(paths) if index % 2 == 0 else list(paths)[::-1]
        row = {"id": triplet.id, "order": order}
        for name in order:
            began, began_cpu = time.perf_counter(), time.process_time()
            (record,) = paths[name]([triplet])
            row[f"{name}_s"] = round(time.perf_counter() - began, 5)
            row[f"{name}_cpu_s"] = round(time.process_time() - began_cpu, 5)
            records[name].append(record)
        row["generated_tokens"] = len(tokenizer(records["library"][-1]["generation"]).input_ids)
        row["em"] = records["library"][-1]["em"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = watch.between(start, watch.sample())
    differences = record_differences(records["library"], records["reference"])
    summary = {name: {"wall_s": _stats([r[f"{name}_s"] for r in rows]),
                      "cpu_s": _stats([r[f"{name}_cpu_s"] for r in rows])} for name in paths}
    for clock, suffix in (("wall", "_s"), ("cpu", "_cpu_s")):
        per_item = [r["reference" + suffix] / r["library" + suffix] for r in rows]
        totals = sum(r["reference" + suffix] for r in rows) / sum(r["library" + suffix] for r in rows)
        summary[f"speedup_{clock}"] = {**loadwatch.spread(per_item, 3), "of_totals": round(totals, 3)}
    return {"model": args.model, "n": len(rows), "lr": args.lr, "max_new_tokens": args.max_new_tokens,
            "malloc": args.malloc,
            "identical_records": not differences, "differences": differences[:20], "summary": summary,
            "load": load, "items": rows, "versions": versions(torch),
            "em": {name: sum(r["em"] for r in records[name]) / max(1, len(rows)) for name in paths}}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"FT evaluation, {result['model']}, n = {result['n']} items, lr {result['lr']:g}, "
             f"max_new_tokens {result['max_new_tokens']}:", "",
             "| path | wall s / example (mean ± SE) | median | CPU s / example (mean ± SE) |", "|---|---|---|---|"]
    for name in ("library", "reference"):
        wall, cpu = s[name]["wall_s"], s[name]["cpu_s"]
        lines.append(f"| {name} | {wall['mean']:.3f} ± {wall['se']:.3f} | {wall['median']:.3f} | "
                     f"{cpu['mean']:.3f} ± {cpu['se']:.3f} |")
    for clock in ("wall", "cpu"):
        sp = s[f"speedup_{clock}"]
        lines.append(f"\nSpeed-up ({clock} time, reference / library): per item median {sp['median']:.2f}x "
                     f"[{sp['min']:.2f}-{sp['max']:.2f}], of the totals {sp['of_totals']:.2f}x")
    lines.append("\nRecords identical (tok_acc, NLL to 1e-5 relative): "
                 + ("yes" if result["identical_records"] else "NO: " + "; ".join(result["differences"][:5])))
    return "\n".join(lines) + f"\n\n{meta_step.verdict(result)}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=int, default=20, help="timed items")
    parser.add_argument("--warmup", type=int, default=1, help="untimed items first, through both paths")
    parser.add_argument("--lr", type=float, default=1e-3, help="the FT step's learning rate")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", required=True, help="JSON results (markdown printed)")
    meta_step.add_malloc_argument(parser)
    parser.add_argument("--probe-s", type=float, default=3.0)
    parser.add_argument("--max-load", type=float, default=loadwatch.MAX_LOAD1)
    parser.add_argument("--max-others-cores", type=float, default=loadwatch.MAX_OTHERS_CORES)
    parser.add_argument("--allow-busy", action="store_true", help="measure and write even on a busy machine")
    args = parser.parse_args()
    if args.n < 1 or args.warmup < 0 or args.threads < 1 or args.max_new_tokens < 1:
        parser.error("need --n >= 1, --warmup >= 0, --threads >= 1, --max-new-tokens >= 1")
    meta_step.apply_malloc(args.malloc)
    watch = loadwatch.LoadWatch()
    before = watch.probe(args.probe_s)
    reasons = loadwatch.busy_reasons(before, [], args.max_load, args.max_others_cores)
    if reasons and not args.allow_busy:
        print("refusing to measure on a busy machine: " + "; ".join(reasons) + " (pass --allow-busy to get figures "
              "marked busy)", file=sys.stderr)
        return 3
    result = run(args)
    after = watch.probe(args.probe_s)
    during = [{**result["load"], "label": "ft evaluation"}] if result["load"]["window_s"] >= MIN_WINDOW_S else []
    result["busy_reasons"] = loadwatch.busy_reasons(before, [*during, {**after, "label": "after the run"}],
                                                    args.max_load, args.max_others_cores)
    result = {"schema": SCHEMA, "busy": bool(result["busy_reasons"]), "allow_busy": args.allow_busy,
              "machine": loadwatch.machine(), "load_before": before, "load_after": after, **result}
    out = meta_step.write_results(result, args.out, args.allow_busy)
    print(markdown(result))
    print(f"wrote {out}")
    if not result["identical_records"]:
        return 1
    return 3 if result["busy"] and not args.allow_busy else 0


if __name__ == "__main__":
    sys.exit(main())
