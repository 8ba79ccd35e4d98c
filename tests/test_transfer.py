"""Transfer: the joint objective adds the target's format loss; the transfer command's rows match the plain
commands they stand for (base = `eval`, prep subset = `prepare`'s)."""

import json
import random

import pytest
import torch

from conftest import make_gpt2
from promptstep.cli import main
from promptstep.data.triplets import Triplet, load_triplets
from promptstep.experiments.transfer import joint_objective
from promptstep.formats import Format
from promptstep.prepare import PrepareOptions, answer_nll, choose_subset

SUBSET = [Triplet(f"s{i}", f"Fact {i} is about {n}.", f"Fact {i} is about", n)
          for i, n in enumerate(["Evan Armstrong", "Mira Tolland", "Ada Quill"])]


def test_joint_objective_adds_weight_times_the_format_loss_of_a_seeded_batch(tokenizer):
    model = make_gpt2(len(tokenizer), seed=1)
    options = PrepareOptions(batch_size=2, nc_weight=0.5, seed=3)
    inject = joint_objective(model, tokenizer, SUBSET, options, weight=2.0)
    meta_loss = torch.tensor(1.25)
    total = inject(meta_loss)
    batch = random.Random("promptstep-joint:3").sample(SUBSET, 2)
    fmt = Format()
    expected = 1.25 + 2.0 * (answer_nll(model, tokenizer, batch, "prompt", fmt)
                             + 0.5 * answer_nll(model, tokenizer, batch, "nc", fmt)).item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_transfer_command_rows_match_the_plain_commands(saved_gpt2_256, tmp_path):
    source, target, runs = tmp_path / "rev", tmp_path / "char", tmp_path / "runs"
    assert main(["data", "reversal", "--out", str(source), "--n-train", "8", "--n-test", "4"]) == 0
    assert main(["data", "character", "--out", str(target), "--n-train", "8", "--n-test", "4"]) == 0
    common = ["--model", saved_gpt2_256, "--runs-dir", str(runs), "--max-new-tokens", "2", "--inner-lr", "0.1"]
    assert main(["transfer", "--source", str(source), "--target", str(target), *common, "--objective", "lg",
                 "--batch-size", "4", "--outer-lr", "1e-3", "--eval-n", "4", "--prep-examples", "4",
                 "--prep-steps", "2", "--prep-batch-size", "2", "--prep-lr", "1e-3"]) == 0
    summary = json.loads((runs / "transfer" / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"base", "meta", "sequential", "joint"}
    assert all(set(by_role) == {"source", "target"} for by_role in results.values())
    subset = choose_subset(load_triplets(target / "train.jsonl"), 4, 0)
    assert summary["prep_subset_ids"] == [t.id for t in subset]
    assert main(["eval", "--data", str(target), "--model", saved_gpt2_256, "--runs-dir", str(runs), "--name", "ev",
                 "--max-new-tokens", "2", "--lrs", "0.1"]) == 0
    plain = json.loads((runs / "ev" / "summary.json").read_text())["settings"]
    for setting in ("nc", "prompt", "ft"):
        assert results["base"]["target"][setting]["tok_acc"] == pytest.approx(plain[setting]["tok_acc"])
    assert results["sequential"]["target"]["ft"] != results["meta"]["target"]["ft"]  # format fine-tuning moved it


def test_transfer_scores_ft_with_the_inner_rule_it_meta_trained_with(saved_gpt2_256, tmp_path, monkeypatch):
    """A transfer run meta-trained with --inner-rule lcgd scores FT with Layer-Causal GD too (a drift bug:
    it used plain SGD)."""
    from promptstep import evaluate as experiments
    from promptstep.rules.lcgd import layer_causal_gradients

    data = tmp_path / "char"
    assert main(["data", "character", "--out", str(data), "--n-train", "8", "--n-test", "4"]) == 0
    rules = []
    real = experiments.evaluate
    monkeypatch.setattr(experiments, "evaluate",
                        lambda model, tok, triplets, options: rules.append(options.inner.gradients(model)) or
                        real(model, tok, triplets, options))
    assert main(["transfer", "--source", str(data), "--target", str(data), "--model", saved_gpt2_256,
                 "--runs-dir", str(tmp_path / "runs"), "--max-new-tokens", "2", "--inner-lr", "0.1",
                 "--inner-rule", "lcgd", "--train-limit", "4", "--batch-size", "2", "--eval-n", "2",
                 "--modes", "sequential", "--prep-examples", "2", "--prep-steps", "1", "--threads", "1"]) == 0
    assert rules and all(rule is layer_causal_gradients for rule in rules)
