"""The ICL-vs-GD instruments run on one model: ZS / ICL / FT recordings per probe, per-example metric rows, and
their summaries (Dai et al. 2023; Deutch et al. 2024; Shen et al. 2024). `promptstep analyze` drives it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

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
from promptstep.analysis.tasks import Probe, ProbeGroup
from promptstep.metrics import mean_se
from promptstep.updates import ParamDict, swapped_parameters

LAYER_METRICS = ("simaou", "simaou_norm", "simam", "simam_delta")


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


def demo_batches(model, tokenizer, demos) -> list[dict]:
    """One LM batch per demonstration (token ids), in order: GD as in Dai / Deutch is SGD, batch 1, one epoch."""
    from promptstep.formats import lm_batch, to_device

    device = next(model.parameters()).device
    return [to_device(lm_batch([list(ids)], tokenizer.pad_token_id), device) for ids in demos]


def analyze_model(model, tokenizer, variants: list[list[ProbeGroup]], config, label: str
                  ) -> list[dict]:
    """Per-example rows for one model: full recordings for the first ordering, distributions for the others."""
    steps = {rule: config.inner(rule) for rule in config.rules}
    for step in steps.values():
        step.gradients(model)  # a bad parameter subset or rule fails here, before any output
    generator = torch.Generator().manual_seed(config.seed)
    rows: list[dict] = []
    distributions: dict[tuple[str, str], list[torch.Tensor]] = {}
    total = sum(len(g.probes) for groups in variants for g in groups)
    bar = tqdm(total=total, desc=f"analyze {label}", unit="probe")
    for variant, groups in enumerate(variants):
        for group in groups:
            demos = demo_batches(model, tokenizer, group.demos)
            adapted = {rule: step.adapted(model, demos) for rule, step in steps.items()}
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
