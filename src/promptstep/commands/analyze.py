"""`promptstep analyze`: record ZS / ICL / FT states, compute the instruments, write a run directory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from promptstep.analysis.baselines import BASELINES, untrained_model
from promptstep.analysis.hooks import Recording, record
from promptstep.analysis.metrics import (
    order_sensitivity,
    overlap_cosine,
    random_simaou,
    rec2ftp,
    simam,
    simam_delta,
    simaou,
    top_k_overlap,
    update,
)
from promptstep.analysis.rules import finetune, masked, trainable
from promptstep.analysis.tasks import (
    POSITIONS,
    Probe,
    ProbeGroup,
    character_groups,
    demo_orders,
    load_reviews,
    mr_group,
    split_reviews,
)
from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.formats import Format
from promptstep.metrics import mean_se
from promptstep.models import load_model, max_length
from promptstep.reporting.analysis import markdown_summary, plot_layers
from promptstep.rules import RULES, gradient_fn
from promptstep.runs import name_from, run_dir, staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml
from promptstep.updates import ParamDict, swapped_parameters

TASKS = ("mr", "character")
LAYER_METRICS = ("simaou", "simaou_norm", "simam", "simam_delta")


@dataclass
class AnalyzeConfig:
    """`promptstep analyze`: ICL vs GD instruments (Dai; Deutch et al.; Shen et al.) on MR or Character Description.

    models: trained models to analyse (the tokenizer of the first is used for all); data: the Character
    Description dataset (MR reads gensim's copy of Pang & Lee); baselines: untrained copies
    of the first model run through the same pipeline; rules: FT update rules (sgd = vanilla GD, lcgd =
    Layer-Causal GD); train_params: "kv", "all" or a regex; position: "last" prompt token or Dai's "label"
    token; permutations: P demonstration orders for order sensitivity (0 = off; MR only).
    """

    models: tuple[str, ...] = ("smollm2-135m",)
    task: str = "mr"
    data: str = ""
    split: str = "test"
    n_test: int = 32
    n_demos: int = 8
    rules: tuple[str, ...] = ("sgd", "lcgd")
    lr: float = 3e-3
    train_params: str = "kv"
    baselines: tuple[str, ...] = BASELINES
    position: str = "last"
    top_k: int = 10
    permutations: int = 0
    seed: int = 0
    attn: str = "eager"
    name: str | None = None
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:
        choices = (("task", (self.task,), TASKS), ("rules", self.rules, RULES),
                   ("baselines", self.baselines, BASELINES), ("position", (self.position,), POSITIONS))
        for key, values, allowed in choices:
            for value in values:
                if value not in allowed:
                    raise InputError(f"config key '{key}': unknown value '{value}' (choose from {', '.join(allowed)})")
        for key in ("models", "rules"):
            if not getattr(self, key):
                raise InputError(f"config key '{key}' is empty")
        for key in ("n_test", "n_demos", "lr", "top_k"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.permutations == 1 or self.permutations < 0:
            raise InputError(f"config key 'permutations' must be 0 (off) or at least 2, got {self.permutations}")
        if self.task == "character" and not self.data:
            raise InputError("task 'character' needs --data (a triplet dataset directory or .jsonl file)")
        if self.task == "character" and self.permutations:
            raise InputError("order sensitivity needs several demonstrations to permute: use task 'mr'")


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short unique labels: a run's name for `runs/NAME/model`, else the last path part or the spec."""
    labels = []
    for spec in specs:
        path = Path(spec)
        label = path.parent.name if path.name == "model" and path.parent.name else path.name or spec
        labels.append(label if label not in labels else f"{label}#{len(labels)}")
    return labels


# ---------------------------------------------------------------- probes


def build_variants(config: AnalyzeConfig, tokenizer) -> list[list[ProbeGroup]]:
    """The probe groups, then (MR with permutations) the same test inputs with the demonstrations re-ordered."""
    if config.task == "character":
        from promptstep.commands.common import load_split

        return [character_groups(tokenizer, load_split(config.data, config.split, config.n_test), Format(),
                                 config.position)]
    demos, tests = split_reviews(load_reviews(), config.n_demos, config.n_test, config.seed)
    orders = demo_orders(len(demos), max(config.permutations, 1), config.seed)
    return [[mr_group(tokenizer, [demos[i] for i in order], tests, config.position)] for order in orders]


def check_lengths(variants: list[list[ProbeGroup]], limit: int, label: str) -> None:
    """Refuse ICL sequences longer than the model's window."""
    longest = max(len(p.icl_ids) for groups in variants for g in groups for p in g.probes)
    if longest > limit:
        raise InputError(f"an ICL sequence is {longest} tokens, over the {limit}-token window of {label}; "
                         "use fewer demonstrations (n_demos)")


# ---------------------------------------------------------------- one model


def settings_states(model, probe: Probe, adapted: dict[str, ParamDict]) -> dict[str, Recording]:
    """ZS, ICL and every rule's FT recording of one probe."""
    states = {"zs": record(model, probe.zs_ids, probe.n_keys, probe.logits_at),
              "icl": record(model, probe.icl_ids, probe.n_keys, probe.logits_at)}
    for rule, values in adapted.items():
        with swapped_parameters(model, values):
            states[rule] = record(model, probe.zs_ids, probe.n_keys, probe.logits_at)
    return states


def _floats(values: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in values]


def example_row(probe: Probe, states: dict[str, Recording], rules: Sequence[str], generator: torch.Generator,
                top_k: int) -> dict:
    """Per-example summary: correctness per setting, and per-layer state metrics of ICL against each FT rule."""
    zs, icl = states["zs"], states["icl"]
    probs = {name: torch.softmax(s.logits.double(), -1) for name, s in states.items()}
    row = {
        "id": probe.id, "label": probe.label, "target_id": probe.target_id,
        "correct": {name: probe.correct(s.logits) for name, s in states.items()},
        "vocab_correct": {name: int(s.logits.argmax()) == probe.target_id for name, s in states.items()},
        "icl": {
            "update_norm": _floats(update(icl.attn_out, zs.attn_out).norm(dim=-1)),
            "simam_zs": _floats(simam(icl.scores, zs.scores)),
            "random_simaou": _floats(random_simaou(icl.attn_out, zs.attn_out, generator)),
            "random_simaou_norm": _floats(random_simaou(icl.attn_out, zs.attn_out, generator, normalize=True)),
        },
    }
    for rule in rules:
        ft = states[rule]
        cos, size = overlap_cosine(probs["icl"], probs[rule], top_k)
        row[rule] = {
            "simaou": _floats(simaou(icl.attn_out, ft.attn_out, zs.attn_out)),
            "simaou_norm": _floats(simaou(icl.attn_out, ft.attn_out, zs.attn_out, normalize=True)),
            "simam": _floats(simam(icl.scores, ft.scores)),
            "simam_delta": _floats(simam_delta(icl.scores, ft.scores, zs.scores)),
            "update_norm": _floats(update(ft.attn_out, zs.attn_out).norm(dim=-1)),
            "top_k_overlap": top_k_overlap(probs["icl"], probs[rule], top_k),
            "overlap_cosine": cos,
            "overlap_size": size,
        }
    if "sgd" in rules and "lcgd" in rules:
        row["alpha"] = _floats(simam_delta(states["lcgd"].scores, states["sgd"].scores, zs.scores))
    return row


def analyze_model(model, tokenizer, variants: list[list[ProbeGroup]], config: AnalyzeConfig, label: str
                  ) -> list[dict]:
    """Per-example rows for one model: full recordings for the first ordering, distributions for the others."""
    params, masks = trainable(model, config.train_params)
    rules = {rule: masked(gradient_fn(rule), masks) for rule in config.rules}
    generator = torch.Generator().manual_seed(config.seed)
    rows: list[dict] = []
    distributions: dict[tuple[str, str], list[torch.Tensor]] = {}
    total = sum(len(g.probes) for groups in variants for g in groups)
    bar = tqdm(total=total, desc=f"analyze {label}", unit="probe")
    for variant, groups in enumerate(variants):
        for group in groups:
            adapted = {rule: finetune(model, params, group.demos, config.lr, fn, tokenizer.pad_token_id)
                       for rule, fn in rules.items()}
            for probe in group.probes:
                states = settings_states(model, probe, adapted)
                if variant == 0:
                    rows.append({"model": label, **example_row(probe, states, config.rules, generator,
                                                                config.top_k)})
                for setting in ("icl", *config.rules) if len(variants) > 1 else ():
                    distributions.setdefault((probe.id, setting), []).append(
                        torch.softmax(states[setting].logits.double(), -1).float())
                bar.update()
    bar.close()
    if len(variants) > 1:
        for row in rows:
            icl = distributions[(row["id"], "icl")]
            cos, size = overlap_cosine(icl[0], icl[1], config.top_k)
            row["icl_vs_icl"] = {"top_k_overlap": top_k_overlap(icl[0], icl[1], config.top_k),
                                 "overlap_cosine": cos, "overlap_size": size}
            row["order_sensitivity"] = {s: order_sensitivity(torch.stack(distributions[(row["id"], s)]))
                                        for s in ("icl", *config.rules)}
    return rows


# ---------------------------------------------------------------- summaries


def _layer_summary(per_example: list[list[float]]) -> dict:
    """Mean over layers of the per-layer means; standard error over examples of each example's layer mean."""
    table = torch.tensor(per_example, dtype=torch.float64)
    _, se = mean_se(table.mean(1).tolist())
    return {"mean": float(table.mean()), "se": se, "per_layer": _floats(table.mean(0))}


def _scalar(values) -> dict:
    mean, se = mean_se(values)
    return {"mean": mean, "se": se}


def summarize_model(rows: list[dict], rules: Sequence[str]) -> dict:
    """Accuracies, Rec2FTP, layer-averaged state metrics, α, distribution overlaps and order sensitivity."""
    settings = list(rows[0]["correct"])
    summary: dict = {
        "n": len(rows),
        "accuracy": {s: _scalar([r["correct"][s] for r in rows]) for s in settings},
        "vocab_accuracy": {s: _scalar([r["vocab_correct"][s] for r in rows]) for s in settings},
        "icl": {m: _layer_summary([r["icl"][m] for r in rows]) for m in rows[0]["icl"]},
        "rules": {},
    }
    for rule in rules:
        entry = {m: _layer_summary([r[rule][m] for r in rows]) for m in (*LAYER_METRICS, "update_norm")}
        zs, ft, icl = ([r["correct"][s] for r in rows] for s in ("zs", rule, "icl"))
        entry["rec2ftp"] = rec2ftp(zs, ft, icl)
        entry["ft_fixes"] = sum(not z and f for z, f in zip(zs, ft))  # Rec2FTP's denominator
        for key in ("top_k_overlap", "overlap_cosine", "overlap_size"):
            entry[key] = _scalar([r[rule][key] for r in rows])
        summary["rules"][rule] = entry
    if "alpha" in rows[0]:
        summary["alpha"] = _layer_summary([r["alpha"] for r in rows])
    if "order_sensitivity" in rows[0]:
        summary["order_sensitivity"] = {s: _scalar([r["order_sensitivity"][s] for r in rows])
                                        for s in rows[0]["order_sensitivity"]}
        summary["icl_vs_icl"] = {k: _scalar([r["icl_vs_icl"][k] for r in rows]) for k in rows[0]["icl_vs_icl"]}
    return summary


def csv_rows(summaries: dict[str, dict]) -> dict[str, dict[str, float]]:
    """One flat row per model and setting (layer-averaged means) for metrics.csv."""
    rows: dict[str, dict[str, float]] = {}
    for label, s in summaries.items():
        sen = s.get("order_sensitivity", {})
        for setting in s["accuracy"]:
            row = {"n": s["n"], "accuracy": s["accuracy"][setting]["mean"],
                   "vocab_accuracy": s["vocab_accuracy"][setting]["mean"]}
            if setting == "icl":
                row.update({m: s["icl"][m]["mean"] for m in ("random_simaou", "random_simaou_norm", "simam_zs")})
            if setting in s["rules"]:
                rule = s["rules"][setting]
                row.update({m: rule[m]["mean"] for m in (*LAYER_METRICS, "top_k_overlap", "overlap_cosine")})
                row["rec2ftp"] = rule["rec2ftp"]
                if setting == "lcgd" and "alpha" in s:
                    row["alpha"] = s["alpha"]["mean"]
            if setting in sen:
                row["order_sensitivity"] = sen[setting]["mean"]
            rows[f"{label}/{setting}"] = row
    return rows


# ---------------------------------------------------------------- run


def run_analyze(config: AnalyzeConfig) -> tuple[Path, dict]:
    """Analyse every model and baseline; publish runs/<name>/ with config, records, metrics and plots."""
    labels = model_labels(config.models)
    out = run_dir(config.runs_dir, config.name or name_from("analyze", config.task, labels[0]))
    started = time.time()
    with staged_dir(out, config.overwrite) as staging:
        write_yaml(staging / "config.yaml", config_dict(config))
        rows: list[dict] = []
        summaries: dict[str, dict] = {}
        first_vocab = None
        variants: list[list[ProbeGroup]] = []
        for index, (spec, label) in enumerate(zip(config.models, labels)):
            model, tokenizer = load_model(spec, attn_implementation=config.attn)
            if first_vocab is None:
                first_vocab = tokenizer.get_vocab()
                variants = build_variants(config, tokenizer)
            elif tokenizer.get_vocab() != first_vocab:
                raise InputError(f"model '{spec}' has a different tokenizer from '{config.models[0]}'")
            check_lengths(variants, max_length(model, tokenizer), label)
            subjects = [(label, model)]
            if index == 0:
                subjects += [(f"{label}:{kind}", untrained_model(model, kind, config.seed))
                             for kind in config.baselines]
            for subject, subject_model in subjects:
                subject_rows = analyze_model(subject_model, tokenizer, variants, config, subject)
                rows += subject_rows
                summaries[subject] = summarize_model(subject_rows, config.rules)
            del model, subjects
        probes = variants[0]
        sizes = {"models": len(summaries), "test_inputs": sum(len(g.probes) for g in probes),
                 "demos_per_group": len(probes[0].demos), "orderings": len(variants)}
        write_jsonl(staging / "records.jsonl", rows)
        write_json(staging / "metrics.json", {"task": config.task, "sizes": sizes,
                                              "wall_s": round(time.time() - started, 1), "models": summaries})
        write_summary_csv(staging / "metrics.csv", csv_rows(summaries))
        table = markdown_summary(summaries)
        (staging / "table.md").write_text(table + "\n", encoding="utf-8")
        plot_layers(summaries, staging, f"{config.task}: ICL vs FT per layer")
    print(table)
    print(f"results in {out} ({time.time() - started:.0f} s)")
    return out, summaries
