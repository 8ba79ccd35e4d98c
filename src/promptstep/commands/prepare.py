"""`promptstep prepare`: format preparation (paper §4.3) on a saved subset."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    check_device,
    check_run_name,
    dataset_file,
    load_from_config,
    load_split,
)
from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.formats import Format, fit_lengths
from promptstep.prepare import PrepareOptions, choose_subset, prepare_format
from promptstep.runs import run_dir, staged_dir, write_json, write_jsonl, write_yaml
from promptstep.tracking import Tracker, check_report_to


@dataclass
class PrepareConfig(PrepareOptions):
    """`promptstep prepare`: format fine-tuning on a saved subset; writes runs/<name>/model."""

    model: str = "smollm2-135m"
    """Model: smollm2-135m (embedded), tiny (embedded), a local directory such as runs/NAME/model, or a hub id."""
    data: str = ""
    """Dataset directory (its <split>.jsonl is read) or one .jsonl file. Required."""
    split: str = "train"
    """Split the subset is drawn from when data is a directory."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    device: str = "auto"
    """Device: auto (the GPU if torch sees one), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Let a model that ships its own Python code run it (off: such a model is refused)."""
    name: str = "prepared"
    """Run name: the prepared model goes to runs_dir/name/model."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""
    report_to: str = "none"
    """Also send the training curve to an experiment tracker: none, tensorboard (pip install
    'promptstep[tracking]'; event files in the run's tensorboard/), trackio or wandb (pip install trackio / wandb)."""

    def validate(self) -> None:

        if not self.data:
            raise InputError("prepare needs --data (a dataset directory or a .jsonl file)")
        super().validate()
        check_device(self.device)
        check_run_name(self.name)
        check_report_to(self.report_to)


def run_prepare(config: PrepareConfig, model_and_tokenizer=None) -> Path:
    from promptstep.models import max_length

    out = run_dir(config.runs_dir, config.name)
    triplets = load_split(config.data, config.split, None)
    subset = choose_subset(triplets, config.n_examples, config.seed)
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        fit_lengths(subset, tokenizer, max_length(model, tokenizer), Format(), False,
                    str(dataset_file(config.data, config.split)))
        write_yaml(staging / "config.yaml", config_dict(config))
        write_json(staging / "subset_ids.json", [t.id for t in subset])
        start = time.time()
        with Tracker(config.report_to, staging, config.name, config_dict(config)) as tracker:
            logs = prepare_format(model, tokenizer, subset, config,
                                  on_step=lambda log: tracker.log(log, log["step"], "prepare"))
            summary = {"wall_s": round(time.time() - start, 1), "final": logs[-1]}
            tracker.log(summary, config.steps, "summary")
        write_jsonl(staging / "train_log.jsonl", logs)
        write_json(staging / "summary.json", summary)
        model.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "model")
    print(f"prepared model in {out / 'model'} (prompt NLL {logs[0]['prompt_nll']:.3f} -> {logs[-1]['prompt_nll']:.3f})")
    return out / "model"
