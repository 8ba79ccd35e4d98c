"""Every shipped YAML preset parses into its command's config."""

from pathlib import Path

import pytest

from promptstep.cli import COMMANDS
from promptstep.config import build_config

PRESETS = {"eval.yaml": "eval", "meta-tiny.yaml": "meta-train", "meta-smollm2.yaml": "meta-train", "demo.yaml": "demo",
           "meta-gpu-1b.yaml": "meta-train", "analyze-mr.yaml": "analyze", "analyze-mr-order.yaml": "analyze",
           "analyze-character.yaml": "analyze"}
ROOT = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(("preset", "command"), sorted(PRESETS.items()))
def test_presets_build(preset, command):
    overrides = {"data": "data/character"} if command != "demo" else {}
    config = build_config(COMMANDS[command].config, ROOT / preset, overrides)
    assert config is not None


SUITES = ("suite-cpu.yaml", "suite-gpu-1b.yaml")


def test_every_preset_is_listed():
    assert {p.name for p in ROOT.glob("*.yaml")} == set(PRESETS) | set(SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_suites_check(name):
    from promptstep.commands.reproduce import check_options, load_suite

    suite = load_suite(ROOT / name)
    check_options(suite)
    assert suite.blocks and all(block.experiments for block in suite.blocks)
