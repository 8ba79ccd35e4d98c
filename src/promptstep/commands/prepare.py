"""`promptstep prepare`: format preparation (paper §4.3) on a saved subset."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    check_device,
    check_models,
    check_run_name,
    dataset_file,
    load_from_config,
    load_split,
)
from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.formats import Format, fit_lengths
from promptstep.model_specs import check_attention
from promptstep.prepare import PrepareOptions, choose_subset, prepare_format
from promptstep.runs import run_dir, staged_dir, write_json, write_jsonl, write_yaml


@dataclass
class PrepareConfig(PrepareOptions):
    """`promptstep prepare`: format fine-tuning on a saved subset; writes runs/<name>/model."""

    model: str = "smollm2-135m"
    data: str = ""
    split: str = "train"
    attn: str = "eager"
    device: str = "auto"
    trust_remote_code: bool = False
    name: str = "prepared"
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:

        if not self.data:
            raise InputError("prepare needs --data (a dataset directory or a .jsonl file)")
        super().validate()
        check_device(self.device)
        check_attention(self.attn)
        check_run_name(self.name)


def run_prepare(config: PrepareConfig, model_and_tokenizer=None) -> Path:
    out = run_dir(config.runs_dir, config.name)
    triplets = load_split(config.data, config.split, None)
    subset = choose_subset(triplets, config.n_examples, config.seed)
    if model_and_tokenizer is None:
        check_models(config)
    from promptstep.models import max_length

    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        fit_lengths(subset, tokenizer, max_length(model, tokenizer), Format(), False,
                    str(dataset_file(config.data, config.split)), hint=" (shorten its context)")
        write_yaml(staging / "config.yaml", config_dict(config))
        write_json(staging / "subset_ids.json", [t.id for t in subset])
        start = time.time()
        logs = prepare_format(model, tokenizer, subset, config)
        write_jsonl(staging / "train_log.jsonl", logs)
        write_json(staging / "summary.json", {"wall_s": round(time.time() - start, 1), "final": logs[-1]})
        model.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "model")
    print(f"prepared model in {out / 'model'} (prompt NLL {logs[0]['prompt_nll']:.3f} -> {logs[-1]['prompt_nll']:.3f})")
    return out / "model"
