"""`promptstep demo`: the main job on the embedded model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    check_run_name,
    positive,
)
from promptstep.commands.data import DataConfig, run_data
from promptstep.commands.meta_train import MetaTrainConfig, run_meta_train
from promptstep.commands.prepare import PrepareConfig, run_prepare
from promptstep.config import config_dict
from promptstep.runs import run_dir, write_json, write_yaml
from promptstep.tracking import check_report_to


@dataclass
class DemoConfig:
    """`promptstep demo`: data -> prepare -> evaluate -> meta-train (LC) -> evaluate, on the embedded model."""

    model: str = "smollm2-135m"
    """Model to prepare and meta-train (default: the embedded SmolLM2-135M-Instruct)."""
    task: str = "character"
    """Generated task: character or reversal."""
    prepare_examples: int = 240
    """Size of the saved subset of training triplets used for format preparation."""
    prepare_steps: int = 25
    """AdamW steps of format preparation."""
    n_train: int = 160
    """Training triplets for meta-training (n_train / batch_size outer steps)."""
    n_eval: int = 40
    """Held-out triplets evaluated before and after meta-training."""
    inner_lr: float = 1e-2
    """Learning rate of the inner SGD step on the context (and of FT in the evaluations)."""
    outer_lr: float = 2e-5
    """Adam learning rate of the outer (meta) update."""
    batch_size: int = 2
    """Examples per outer step."""
    lm_weight: float = 0.0
    """Weight λ of the language-modelling regulariser (0 = off)."""
    first_order: bool = False
    """Treat the inner gradient as a constant (first order, about 2x faster)."""
    seed: int = 0
    """Seed of the data, the preparation subset and the training order."""
    name: str = "demo"
    """Run name: data, prepared model, meta-trained model and demo.png go under runs_dir/name."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""
    report_to: str = "none"
    """Also send preparation's and meta-training's curves to an experiment tracker: none, tensorboard (pip install
    'promptstep[tracking]'; event files in the run's tensorboard/), trackio or wandb (pip install trackio / wandb)."""

    def validate(self) -> None:
        check_run_name(self.name)
        check_report_to(self.report_to)
        for key in ("prepare_examples", "prepare_steps", "n_train", "n_eval", "inner_lr", "outer_lr", "batch_size"):
            positive(key, getattr(self, key))


def run_demo(config: DemoConfig) -> Path:

    from promptstep.models import load_model
    from promptstep.reporting.render import plot_settings
    from promptstep.runs import check_run_dir

    out = run_dir(config.runs_dir, config.name)
    check_run_dir(out, config.overwrite)
    per_example = 1.0 if config.first_order else 2.5
    minutes = (25 + config.prepare_steps * 6 + 2 * config.n_eval * 2.5 + config.n_train * per_example) / 60
    print(f"promptstep demo: {config.model} on {config.task}; prepare {config.prepare_steps} steps, meta-train LC on "
          f"{config.n_train} triplets, evaluate {config.n_eval} held-out triplets before and after. "
          f"Expect about {minutes:.0f} minutes on 2 CPU cores.", flush=True)
    started = time.time()
    data = out / "data"
    run_data(DataConfig(task=config.task, out=str(data), seed=config.seed, overwrite=config.overwrite))
    model, tokenizer = load_model(config.model)
    prepare = PrepareConfig(model=config.model, data=str(data), n_examples=config.prepare_examples,
                            steps=config.prepare_steps, seed=config.seed, name="prepare", runs_dir=str(out),
                            overwrite=config.overwrite, report_to=config.report_to)
    run_prepare(prepare, (model, tokenizer))
    meta = MetaTrainConfig(model=str(out / "prepare" / "model"), data=str(data), train_limit=config.n_train,
                           eval_n=config.n_eval, objective="lc", inner_lr=config.inner_lr, outer_lr=config.outer_lr,
                           batch_size=config.batch_size, lm_weight=config.lm_weight, first_order=config.first_order,
                           checkpoint_every=0, seed=config.seed, name="meta-train", runs_dir=str(out),
                           overwrite=config.overwrite, report_to=config.report_to)
    _, summary = run_meta_train(meta, (model, tokenizer))
    write_yaml(out / "config.yaml", config_dict(config))
    write_json(out / "summary.json", {"wall_s": round(time.time() - started, 1), **summary})
    plot_settings({"prepared base": summary["before"], "meta-trained (LC)": summary["after"]},
                  out / "demo.png", f"{config.model}, {config.task}: one SGD step on the context (FT) vs prompting")
    print(f"demo finished in {(time.time() - started) / 60:.1f} min; table above, plot in {out / 'demo.png'}")
    return out
