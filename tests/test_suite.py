"""The paper's experiments end to end on a microscopic model: `reproduce` on a small suite (every experiment,
report tables and Figure 2), resume, the single commands, and bad input (one line, exit 2, nothing written)."""

import json

import pytest
import yaml

from promptstep.cli import main
from promptstep.data.triplets import load_triplets

META = {"inner_lr": 0.1, "outer_lr": 1e-3, "batch_size": 4, "train_limit": 8, "eval_n": 4, "max_new_tokens": 3}


def _suite(model, **changes):
    block = {
        "name": "small",
        "model": model,
        "tasks": {"character": {"generate": "character", "n_train": 12, "n_test": 8},
                  "reversal": {"generate": "reversal", "n_train": 12, "n_test": 8},
                  "character-d1": {"distract": "character", "distractors": 1}},
        "meta": META,
        "experiments": {
            "figure2": {"tasks": ["character"]},
            "lora": {"tasks": ["character"], "modes": {"outer": {}, "inner": {"inner_lr": 1.0}}},
            "multi": {"tasks": ["character"], "inner_ks": [1, 4], "eval": {"sizes": [1, 4], "n_groups": 2}},
            "controls": {"tasks": ["character"], "train_n": 4, "base_model": True},
            "cross": {"pairs": [["character", "character-d1"]]},
            "transfer": {"source": "reversal", "target": "character", "prep_examples": 4, "prep_steps": 1},
        },
    }
    block.update(changes)
    return {"name": "suite", "blocks": [block]}


def _write(tmp_path, suite, name="suite.yaml"):
    path = tmp_path / name
    suite.setdefault("runs_dir", str(tmp_path / "runs"))
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def test_reproduce_runs_every_experiment_and_reports_paper_tables(saved_gpt2_256, tmp_path, capsys):
    suite_file = _write(tmp_path, _suite(saved_gpt2_256))
    assert main(["reproduce", "--suite", suite_file]) == 0
    root = tmp_path / "runs" / "suite"
    runs = {p.name for p in (root / "small").iterdir()}
    assert {"meta-lc-character", "meta-lg-character", "lora-outer-character", "lora-inner-character",
            "multi-k1-character", "multi-k4-character", "multi-eval-base-character", "multi-eval-k1-character",
            "multi-eval-k4-character",
            "controls-character", "controls-base-character", "meta-lg-reversal", "transfer-reversal-to-character",
            "cross-lg-character-on-character-d1"} <= runs
    assert len(load_triplets(root / "small" / "data" / "character-d1" / "test.jsonl")) == 8
    report = (root / "report" / "small" / "report.md").read_text()
    for title in ("Figure 2", "Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Meta-trained models on"):
        assert f"## {title}" in report
    assert "| SQuAD | 87.7 | 47.3 | 58.6 | 59.4 | 45.1 | 72.0 |" in report  # the paper's Table 1 beside ours
    assert "meta-lg-character` (also found: `multi-k1-character`)" in report  # which run fills the LG slot
    assert (root / "report" / "small" / "figure2.png").stat().st_size > 1000
    table2 = (root / "report" / "small" / "table2.csv").read_text().splitlines()
    assert table2[0] == "task,model,1,sequential@4,batched@4" and len(table2) == 4  # base, k=1, k=4
    lora_inner = json.loads((root / "small" / "lora-inner-character" / "summary.json").read_text())
    lg = json.loads((root / "small" / "meta-lg-character" / "summary.json").read_text())
    assert lora_inner["before"]["ft"] != lg["before"]["ft"]  # the untrained adapter's step is not the full step
    assert yaml.safe_load((root / "small" / "lora-inner-character" / "config.yaml").read_text())["inner_lr"] == 1.0
    controls = json.loads((root / "small" / "controls-character" / "summary.json").read_text())
    assert set(controls["breakdown"]) == {"test", "train"} and "leak_em" in controls["eval"]["irrelevant"]
    capsys.readouterr()
    # A second run refuses to overwrite; --resume reuses every finished step and rebuilds the report.
    assert main(["reproduce", "--suite", suite_file]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["reproduce", "--suite", suite_file, "--resume", "true"]) == 0
    assert "[reproduce] 0 steps" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"experiments": {"lora": {"tasks": ["squad"]}}}, "unknown task 'squad'"),
    ({"experiments": {"figure2": {"objective": "lc"}}}, "unknown key 'objective'"),
    ({"tasks": {"x": {"generate": "character", "data": "d"}}}, "give one of 'generate'"),
    ({"tasks": {"x": {"distract": "y"}}}, "distract names an unknown task 'y'"),
])
def test_bad_suites_give_one_line_and_write_nothing(tmp_path, capsys, change, message):
    assert main(["reproduce", "--suite", _write(tmp_path, _suite("tiny", **change))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change,message", [
    ({"meta": {**META, "outer_lr": -1}}, "'outer_lr' must be positive"),
    ({"meta": {**META, "inner_lr": "fast"}}, "'inner_lr': expected a number"),
    ({"meta": {**META, "lora_rnk": 2}}, "unknown config key 'lora_rnk'"),
    ({"tasks": {"character": {"generate": "character", "n_tran": 5}, "reversal": {"generate": "reversal"},
                "character-d1": {"distract": "character", "distractors": 1}}}, "unknown config key 'n_tran'"),
    ({"tasks": {"character": {"generate": "character"}, "reversal": {"generate": "reversal"},
                "character-d1": {"distract": "character", "distractors": -1}}}, "'distractors' must be >= 0"),
    ({"experiments": {"multi": {"inner_ks": [3]}}}, "inner_k must be >= 1 and divide batch_size"),
    ({"experiments": {"multi": {"inner_ks": [4], "eval": {"modes": ["parallel"]}}}}, "unknown mode 'parallel'"),
])
def test_bad_option_values_fail_before_anything_runs(tmp_path, capsys, change, message):
    assert main(["reproduce", "--suite", _write(tmp_path, _suite("tiny", **change))]) == 2
    err = capsys.readouterr().err
    assert "suite block 'small'" in err and message in err
    assert not (tmp_path / "runs").exists()


def test_single_commands_and_report(saved_gpt2_256, tmp_path, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert main(["data", "character", "--out", str(data), "--n-train", "6", "--n-test", "6"]) == 0
    assert main(["distract", "--data", str(data), "--out", str(tmp_path / "d2"), "--distractors", "2"]) == 0
    multi = load_triplets(tmp_path / "d2" / "test.jsonl")
    assert len(multi) == 6 and all(t.id.endswith("+d2") for t in multi)
    common = ["--model", saved_gpt2_256, "--runs-dir", str(runs), "--max-new-tokens", "2"]
    assert main(["multi-context", "--data", str(tmp_path / "d2"), *common, "--sizes", "1,2", "--n-groups", "2",
                 "--lr", "0.1", "--name", "multi"]) == 0
    assert main(["controls", "--data", str(data), *common, "--lrs", "0.1", "--train-n", "0", "--name", "ctl"]) == 0
    summary = json.loads((runs / "ctl" / "summary.json").read_text())
    assert summary["kind"] == "controls" and set(summary["breakdown"]) == {"test"}
    capsys.readouterr()
    assert main(["report", str(runs / "multi"), str(runs / "ctl"), "--out", str(tmp_path / "rep")]) == 0
    assert "Table 2" in (tmp_path / "rep" / "report.md").read_text()
    assert not (tmp_path / "rep" / "figure2.png").exists()  # no meta-train runs: no Figure 2
    assert main(["report", str(tmp_path / "data")]) == 2
    assert "no meta-train, multi-context, controls, transfer or cross-evaluation runs" in capsys.readouterr().err
    assert main(["multi-context", "--data", str(data), *common, "--modes", "parallel"]) == 2
    assert main(["controls", "--data", str(data), *common, "--settings", "prompt,ft"]) == 2
    assert main(["distract", "--data", str(data), "--out", str(tmp_path / "d3"), "--distractors", "9"]) == 2
    assert not (tmp_path / "d3").exists()


def test_suite_evaluations_take_the_inner_step_the_models_were_trained_for(tmp_path, monkeypatch):
    """controls / multi-context / cross evaluate with the meta config's inner lr, steps, parameter subset and
    rule (block meta + the experiment's own meta), not plain one-step SGD on every parameter (a drift bug)."""
    from promptstep.commands import reproduce as suite_module

    made: dict[str, object] = {}
    monkeypatch.setattr(suite_module.BlockRunner, "meta", lambda self, task, *a, **k: tmp_path / f"meta-{task}")
    monkeypatch.setattr(suite_module.BlockRunner, "base", lambda self, task: "base-model")
    monkeypatch.setattr(suite_module.BlockRunner, "data", lambda self, task: str(tmp_path / task))
    monkeypatch.setattr(suite_module.BlockRunner, "_step",
                        lambda self, path, run: made.setdefault(path.name, run) and path)
    for name in ("run_controls", "run_multi_context", "run_eval"):
        monkeypatch.setattr(suite_module, name, lambda config, name=name: made.__setitem__(config.name, config))
    meta = {**META, "inner_steps": 2, "inner_params": "h\\.1\\.", "inner_rule": "lcgd"}
    block = suite_module.Block("b", "m", {"c": {"generate": "character"}, "d": {"generate": "character"}}, None,
                               meta, {"controls": {"tasks": ["c"], "meta": {"inner_lr": 0.25}},
                                      "multi": {"tasks": ["c"], "inner_ks": [1]},
                                      "cross": {"pairs": [["c", "d"]]}})
    runner = suite_module.BlockRunner(block, tmp_path, [])
    runner.run()
    for step in list(made.values()):
        if callable(step):
            step(None)
    controls, multi, cross = made["controls-c"], made["multi-eval-k1-c"], made["cross-lg-c-on-d"]
    for config in (controls, multi, cross):
        assert (config.steps, config.param_filter, config.rule) == (2, "h\\.1\\.", "lcgd")
    assert controls.lrs == (0.25,) and cross.lrs == (0.1,) and multi.lr == 0.1


def test_cross_evaluates_base_and_meta_trained_models_on_held_out_families_with_tag_breakdown(saved_gpt2_256,
                                                                                               tmp_path):
    """A multi-fact task with held-out families: `cross` evaluates the base model and the LG / LC models on
    `mix:test_families`; the report shows them with agreement and distractor rates, grouped by number of facts."""
    suite = {"name": "spec", "blocks": [{
        "name": "b", "model": saved_gpt2_256,
        "tasks": {"mix": {"generate": "character", "n_train": 12, "n_test": 6, "facts": [1, 2],
                          "heldout_families": 4}},
        "meta": META,
        "experiments": {"cross": {"pairs": [["mix", "mix:test_families"]], "objectives": ["lg", "lc"],
                                  "base_model": True}}}]}
    assert main(["reproduce", "--suite", _write(tmp_path, suite)]) == 0
    block = tmp_path / "runs" / "spec" / "b"
    for label in ("base", "lg", "lc"):
        config = yaml.safe_load((block / f"cross-{label}-mix-on-mix-test_families" / "config.yaml").read_text())
        assert config["split"] == "test_families"
    summary = json.loads((block / "cross-lg-mix-on-mix-test_families" / "summary.json").read_text())
    assert "agree_prompt" in summary["settings"]["ft"] and set(summary["by_tag"]["n_facts"]) <= {"1", "2"}
    report = (tmp_path / "runs" / "spec" / "report" / "b" / "report.md").read_text()
    assert "| mix:test_families | Base (" in report and "n_facts=" in report


def test_cross_pairs_name_existing_tasks_and_safe_splits(tmp_path, capsys):
    bad = _suite("tiny", experiments={"cross": {"pairs": [["character", "character:../x"]]}})
    assert main(["reproduce", "--suite", _write(tmp_path, bad)]) == 2
    assert "split name '../x' is a path" in capsys.readouterr().err
    unknown = _suite("tiny", experiments={"cross": {"pairs": [["character", "nosuch:test_families"]]}})
    assert main(["reproduce", "--suite", _write(tmp_path, unknown, "u.yaml")]) == 2
    assert "unknown task 'nosuch'" in capsys.readouterr().err
