"""`promptstep transfer`: cross-dataset transfer (paper Table 3)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    check_device,
    check_run_name,
    fitted_split,
    load_from_config,
    positive,
    write_run_files,
)
from promptstep.errors import InputError
from promptstep.meta.options import MetaOptions
from promptstep.runs import run_dir, staged_dir


@dataclass
class TransferConfig(MetaOptions):
    """`promptstep transfer`: meta-train on `source`, then teach `target`'s format after (sequential) or during
    (joint) meta-training; FT accuracy on both (paper Table 3)."""

    model: str = "tiny"
    """Base model: smollm2-135m (embedded), tiny (embedded), a local directory such as runs/NAME/model, or a hub id."""
    source: str = ""
    """Dataset directory meta-training uses (train split); FT on its test split measures retention. Required."""
    target: str = ""
    """Dataset directory whose format is taught (train split); FT on its test split measures transfer. Required."""
    source_model: str | None = None
    """A model already meta-trained on source, used instead of meta-training one (default: none)."""
    target_run: str | None = None
    """A meta-train run on target whose after-evaluation is reported as the in-domain number."""
    modes: tuple[str, ...] = ("sequential", "joint")
    """How target's format is taught: sequential (format fine-tuning after meta-training) and/or joint (both losses in
    every outer step)."""
    joint_weight: float = 1.0
    """Weight of target's format loss in every outer step of the joint mode."""
    prep_examples: int = 240
    """Format fine-tuning on target: size of the saved subset of its training triplets."""
    prep_steps: int = 30
    """Format fine-tuning on target: AdamW steps."""
    prep_batch_size: int = 8
    """Format fine-tuning on target: triplets per step."""
    prep_lr: float = 3e-5
    """Format fine-tuning on target: AdamW learning rate."""
    prep_nc_weight: float = 0.5
    """Format fine-tuning on target: weight of the NC-format loss."""
    train_limit: int | None = None
    """Use only the first N training triplets of source (default: all)."""
    eval_n: int = 100
    """Test triplets of each dataset evaluated (the first N)."""
    epochs: int = 1
    """Meta-training epochs over source."""
    seed: int = 0
    """Seed of batches, subsets and LoRA initialisation."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    device: str = "auto"
    """Device: auto (the GPU if torch sees one), cpu, cuda or cuda:N."""
    name: str = "transfer"
    """Run name: the run is written to runs_dir/name."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""

    def validate(self) -> None:

        if not self.source or not self.target:
            raise InputError("transfer needs --source and --target (dataset directories)")
        super().validate()
        for mode in self.modes:
            if mode not in ("sequential", "joint"):
                raise InputError(f"unknown transfer mode '{mode}' (choose from sequential, joint)")
        for key in ("prep_examples", "prep_steps", "prep_batch_size", "prep_lr", "eval_n", "epochs"):
            positive(key, getattr(self, key))
        if self.joint_weight < 0:
            raise InputError(f"config key 'joint_weight' must be >= 0, got {self.joint_weight}")
        check_device(self.device)
        check_run_name(self.name)

    def prepare_options(self):
        from promptstep.prepare import PrepareOptions

        return PrepareOptions(n_examples=self.prep_examples, steps=self.prep_steps, batch_size=self.prep_batch_size,
                              lr=self.prep_lr, nc_weight=self.prep_nc_weight, seed=self.seed)


def _meta_trained(model, tokenizer, config: TransferConfig, train, make_inject=None):
    """A model meta-trained on `train` (a copy; `model` is untouched) and the training result; `make_inject`
    builds the trainer's inject hook from the model being trained."""
    from promptstep.meta.loop import batches_for, run_training
    from promptstep.meta.lora import build_trainer

    trainer = build_trainer(copy.deepcopy(model), tokenizer, config, seed=config.seed)
    inject = make_inject(trainer.model) if make_inject else None
    batches = batches_for(trainer.build_examples(train), config.batch_size, config.epochs, config.seed)
    result = run_training(trainer, batches, out=None, eval_set=[], eval_every=0, checkpoint_every=0, inject=inject)
    if result["stopped"]:
        raise InputError(f"transfer: meta-training stopped ({result['stopped']})")
    return trainer.eval_model(), result


def run_transfer(config: TransferConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    from promptstep.evaluate import EvalOptions, evaluate, summarize
    from promptstep.experiments.transfer import joint_objective
    from promptstep.prepare import choose_subset, prepare_format
    from promptstep.reporting.render import markdown_table

    out = run_dir(config.runs_dir, config.name)
    with staged_dir(out, config.overwrite) as staging:
        base, tokenizer = model_and_tokenizer or load_from_config(config)
        evals = {role: fitted_split(base, tokenizer, data, "test", config.eval_n)
                 for role, data in (("source", config.source), ("target", config.target))}
        source_train = fitted_split(base, tokenizer, config.source, "train", config.train_limit)
        subset = choose_subset(fitted_split(base, tokenizer, config.target, "train", None), config.prep_examples,
                               config.seed)

        options = EvalOptions(inner=config.inner(), max_new_tokens=config.max_new_tokens)
        start = time.time()
        models = {"base": base}
        if config.source_model:
            models["meta"] = load_from_config(config, config.source_model)[0]
        else:
            models["meta"] = _meta_trained(base, tokenizer, config, source_train)[0]
        if "sequential" in config.modes:
            models["sequential"] = copy.deepcopy(models["meta"])
            prepare_format(models["sequential"], tokenizer, subset, config.prepare_options())
        if "joint" in config.modes:
            def joint(model):
                return joint_objective(model, tokenizer, subset, config.prepare_options(), config.joint_weight)

            models["joint"] = _meta_trained(base, tokenizer, config, source_train, make_inject=joint)[0]
        records, results = [], {}
        for label, model in models.items():
            for role, triplets in evals.items():
                rows = evaluate(model, tokenizer, triplets, options)
                results.setdefault(label, {})[role] = summarize(rows)
                records += [{**r, "model": label, "dataset": role} for r in rows]
        summary = {"kind": "transfer", "source": config.source, "target": config.target, "results": results,
                   "prep_subset_ids": [t.id for t in subset], "wall_s": round(time.time() - start, 1)}
        if config.target_run:
            from promptstep.reporting.paper_tables import read_summary

            summary["in_domain_target"] = read_summary(Path(config.target_run))["after"]
        csv_rows = {f"{label}/{role}/{s}": e for label, by_role in results.items()
                    for role, block in by_role.items() for s, e in block.items()}
        write_run_files(staging, config, records, summary, csv_rows)
    print(markdown_table({f"{label} on {role}": block for label, by_role in results.items()
                          for role, block in by_role.items()}))
    print(f"results in {out}")
    return out, summary
