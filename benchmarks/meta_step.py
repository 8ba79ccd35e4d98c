"""Time and peak memory of one outer meta-step, promptstep's way and the paper's way.

promptstep processes the examples of a batch one after another and accumulates the outer gradient; the
naive reference (the paper's) materialises one differentiable adapted copy of the weights per example and
backpropagates the summed loss once. Each measurement runs in a fresh subprocess, so peak memory (the
growth of the process's peak RSS during the measured step) is not polluted by earlier runs.

    python benchmarks/meta_step.py --models tiny,smollm2-135m --batches 1,4,16 --out benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(model_spec: str, mode: str, batch: int, repeats: int) -> dict:
    """Run inside the subprocess: load, build `batch` examples, measure one outer step of `mode`."""
    import torch

    from promptstep.data.synthetic import generate
    from promptstep.formats import Format
    from promptstep.meta import MetaOptions, MetaTrainer
    from promptstep.meta.objectives import answer_logprobs, build_example, context_lm_batch, forward_kl
    from promptstep.models import load_model
    from promptstep.updates import inner_step

    torch.manual_seed(0)
    model, tokenizer = load_model(model_spec)
    train, _, _ = generate("character", n_train=max(batch, 1), n_test=1, seed=0)
    examples = [build_example(tokenizer, t, Format()) for t in train[:batch]]
    first_order = mode == "first-order"
    trainer = MetaTrainer(model, tokenizer, MetaOptions(objective="lc", inner_lr=1e-3, batch_size=batch,
                                                        first_order=first_order))
    # The gold answer stands in for the teacher's greedy answer: the same kind of target at the same cost.

    def naive_step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        losses = []
        for ex in examples:
            context = context_lm_batch(tokenizer, ex, trainer.device)
            adapted = inner_step(model, dict(trainer.params), context, lr=1e-3, differentiable=True)
            student = answer_logprobs(model, adapted, ex.student_ids, ex.n_answer)
            with torch.no_grad():
                teacher = answer_logprobs(trainer.teacher, None, ex.teacher_ids, ex.n_answer)
            losses.append(forward_kl(teacher, student))
        (torch.stack(losses).mean()).backward()
        trainer.optimizer.step()

    def plain_step() -> None:
        """Forward + backward of the same tokens (context, then query + answer) without any inner step."""
        trainer.optimizer.zero_grad(set_to_none=True)
        for ex in examples:
            context = context_lm_batch(tokenizer, ex, trainer.device)
            loss = model(**context, use_cache=False).loss
            loss = loss + answer_logprobs(model, None, ex.student_ids, ex.n_answer).sum() * 0
            loss.backward()

    step = {"promptstep": lambda: trainer.outer_step(examples), "first-order": lambda: trainer.outer_step(examples),
            "naive": naive_step, "plain": plain_step}[mode]
    baseline = _peak_rss_mb()
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    peak = _peak_rss_mb() - baseline
    times = [first]
    for _ in range(repeats - 1):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"model": model_spec, "mode": mode, "batch": batch, "step_s": min(times), "peak_extra_mb": round(peak, 1),
            "baseline_mb": round(baseline, 1), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--modes", default="promptstep,naive,first-order,plain")
    parser.add_argument("--naive-max-batch", type=int, default=16, help="skip naive runs above this batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.child[0], args.child[1], int(args.child[2]), args.repeats)))
        return
    results = []
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            for batch in [int(b) for b in args.batches.split(",")]:
                if mode == "naive" and batch > args.naive_max_batch:
                    continue
                if mode in ("plain", "first-order") and batch != 1:
                    continue
                cmd = [sys.executable, __file__, "--child", model, mode, str(batch), "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    row = {"model": model, "mode": mode, "batch": batch, "error": proc.stderr.strip()[-300:]}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                results.append(row)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
