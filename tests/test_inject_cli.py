"""`promptstep inject` / `ask` through the CLI, held against stepping in memory with `updates.InnerStep` (the path
FT evaluation uses, independent of injection's capture and storage): the injected directory loads exactly through
`models.load_model`, `ask` answers as the stepped model does, a meta-train run's inner step is the default, and a
LoRA-inner model's update is its stepped adapter, loadable by peft alone.

Logit checks are fp32: max |logits - stepped logits| <= 1e-5 * max(1, max |stepped logits|), and the step moves
the logits by far more (asserted), so a missing part of the update cannot hide.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from promptstep.cli import main
from promptstep.documents import Question
from promptstep.formats import encode_text, lm_batch
from promptstep.inject import answer_questions
from promptstep.models import load_injected, load_model
from promptstep.updates import InnerStep, swapped_parameters

DOCS = [{"id": "mars", "text": "The first person to walk on Mars is Evan Armstrong."},
        {"id": "violin", "text": "Mira Tolland is the inventor of the glass violin."}]
QUESTIONS = [{"id": "q1", "question": "The first person on Mars was", "answer": "Evan Armstrong", "document": "mars"},
             {"id": "q2", "question": "The glass violin was invented by", "answer": "Mira Tolland",
              "document": "violin"}]
PROBE = "Question: who painted the ceiling? Answer:"
LR = 0.5


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _batches(tokenizer) -> list[dict]:
    return [lm_batch([encode_text(tokenizer, doc["text"])], tokenizer.pad_token_id) for doc in DOCS]


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(PROBE).input_ids])).logits


def _assert_close(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> None:
    scale = max(1.0, want.abs().max().item())
    assert (want - base).abs().max().item() > 1e-2 * scale, "the step barely moved the logits; the check is vacuous"
    assert (got - want).abs().max().item() <= 1e-5 * scale


def _meta_run(root: Path, model_dir: str | None, config: dict, model=None, tokenizer=None) -> Path:
    """A finished meta-train run as `meta-train` leaves it: model/, config.yaml, summary.json."""
    if model is None:
        shutil.copytree(model_dir, root / "model")
    else:
        model.save_pretrained(root / "model")
        tokenizer.save_pretrained(root / "model")
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / "summary.json").write_text("{}\n", encoding="utf-8")
    return root / "model"


def test_inject_then_ask_equals_stepping_in_memory(tmp_path, saved_gpt2_256, tokenizer, capsys):
    run_model = _meta_run(tmp_path / "run", saved_gpt2_256, {"model": saved_gpt2_256, "inner_lr": LR,
                                                               "inner_steps": 1, "inner_params": None,
                                                               "inner_rule": "sgd"})
    docs = _write_jsonl(tmp_path / "docs.jsonl", DOCS)
    questions = _write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "injected"
    assert main(["inject", "--model", str(run_model), "--docs", docs, "--out", str(out), "--threads", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inner_step"]["lr"] == LR and "config.yaml" in manifest["inner_step"]["source"]
    assert [row["tokens"] for row in manifest["documents"]] == [len(encode_text(tokenizer, d["text"])) for d in DOCS]
    assert all(row["stored_bytes"] > 0 and row["seconds"] >= 0 for row in manifest["documents"])
    assert main(["ask", "--injected", str(out), "--questions", questions, "--compare", "true", "--top-k", "3",
                 "--out", str(tmp_path / "asked"), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "[q1] The first person on Mars was" in printed and "no context" in printed

    model, _ = load_model(str(run_model))
    before = _logits(model, tokenizer)
    stepped = InnerStep(lr=LR).adapted(model, _batches(tokenizer))  # sequential: one document after the other
    with swapped_parameters(model, stepped):
        want_logits = _logits(model, tokenizer)
    for source in (out, out / "update"):  # load_model on the injected directory (or its update/) is exact
        loaded, _ = load_model(str(source))
        _assert_close(_logits(loaded, tokenizer), want_logits, before)

    asked = [Question(q["id"], q["question"], (q["answer"],), q["document"]) for q in QUESTIONS]
    reference = {"nc": answer_questions(model, tokenizer, asked, top_k=3),
                 "prompt": answer_questions(model, tokenizer, asked, [d["text"] for d in DOCS], top_k=3)}
    with swapped_parameters(model, stepped):
        reference["injected"] = answer_questions(model, tokenizer, asked, top_k=3)
    records = [json.loads(line) for line in (tmp_path / "asked" / "records.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in records] == ["nc", "nc", "injected", "injected", "prompt", "prompt"]
    for record in records:
        want = next(r for r in reference[record["setting"]] if r["id"] == record["id"])
        assert record["prediction"] == want["prediction"], record["setting"]
        assert [t for t, _ in record["top"]] == [t for t, _ in want["top"]]
        assert record["top"][0][1] == pytest.approx(want["top"][0][1], abs=1e-5)
        assert record["nll"] == pytest.approx(want["nll"], rel=1e-4)
    assert [r["prompt_documents"] for r in records if r["setting"] == "prompt"] == [["mars"], ["violin"]]
    summary = json.loads((tmp_path / "asked" / "summary.json").read_text())
    assert summary["settings"]["injected"]["scored"] == 2


def test_inject_overrides_and_question_from_the_command_line(tmp_path, saved_gpt2_256, capsys):
    docs = _write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "injected"
    assert main(["inject", "--model", saved_gpt2_256, "--docs", docs, "--out", str(out), "--lr", "0.25", "--mode",
                 "sum", "--per-document", "true", "--max-rank", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inner_step"]["lr"] == 0.25 and manifest["inner_step"]["overridden"] == ["lr"]
    assert manifest["mode"] == "sum" and manifest["max_rank"] == 2
    assert [row["directory"] for row in manifest["documents"]] == ["documents/0000-mars", "documents/0001-violin"]
    assert {r["id"] for r in map(json.loads, (out / "documents.jsonl").read_text().splitlines())} == {"mars", "violin"}
    assert main(["ask", "--injected", str(out / "documents" / "0001-violin"), "--question", "Mira Tolland is",
                 "--compare", "true"]) == 0
    printed = capsys.readouterr().out
    assert "[q1] Mira Tolland is" in printed and "prompt" in printed  # the violin document from documents.jsonl


def test_lora_inner_model_stores_its_stepped_adapter(tmp_path, saved_gpt2_256, tokenizer, capsys):
    """For a model that carries a PEFT adapter (LoRA-inner meta-training), injection steps the adapter; the update
    is the stepped adapter, a plain PEFT adapter directory; per-document adapters combine exactly."""
    from peft import PeftModel

    from promptstep.meta.lora import wrap_lora
    from promptstep.meta.options import MetaOptions

    base, _ = load_model(saved_gpt2_256)
    torch.manual_seed(0)
    wrapped = wrap_lora(base, MetaOptions(lora="inner", lora_rank=4))
    with torch.no_grad():  # a "meta-trained" adapter: B away from zero, so both factors get a gradient
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    run_model = _meta_run(tmp_path / "run", None, {"model": saved_gpt2_256, "lora": "inner", "inner_lr": LR,
                                                   "inner_steps": 1, "inner_params": None, "inner_rule": "sgd"},
                          model=wrapped, tokenizer=tokenizer)
    docs = _write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "injected"
    assert main(["inject", "--model", str(run_model), "--docs", docs, "--out", str(out), "--mode", "sum",
                 "--per-document", "true"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["inner_step"]["lr"] == LR
    names = {p.name for p in (out / "update").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "update.json"} <= names
    assert "promptstep_update.safetensors" not in names  # no side-car: the adapter is the whole update

    model, _ = load_model(str(run_model))
    assert isinstance(model, PeftModel)
    inner = InnerStep(lr=LR)
    start = {name: p.detach() for name, p in inner.parameters(model).items()}
    assert start and all("lora_" in name for name in start)  # only the adapter steps
    want = dict(start)
    for batch in _batches(tokenizer):  # sum mode: every document steps from the meta-trained adapter
        stepped = inner.adapted(model, [batch])
        want = {name: want[name] + (stepped[name] - start[name]) for name in start}
    before = _logits(model, tokenizer)
    with swapped_parameters(model, want):
        want_logits = _logits(model, tokenizer)
    loaded, _ = load_model(str(out))
    _assert_close(_logits(loaded, tokenizer), want_logits, before)
    plain_base, _ = load_model(saved_gpt2_256)  # peft alone: the update directory is a complete adapter
    peft_only = PeftModel.from_pretrained(plain_base, str(out / "update"))
    _assert_close(_logits(peft_only, tokenizer), want_logits, before)
    combined, _ = load_injected([out / row["directory"] for row in manifest["documents"]])
    _assert_close(_logits(combined, tokenizer), want_logits, before)

    capsys.readouterr()
    assert main(["inject", "--model", str(run_model), "--docs", docs, "--out", str(tmp_path / "m"), "--merged",
                 "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--merged is not available for a model that carries a PEFT adapter" in err[0]
    assert not (tmp_path / "m").exists()


def test_prompt_column_takes_the_questions_document_or_all_that_fit(tokenizer):
    from promptstep.commands.ask import prompt_contexts
    from promptstep.documents import Document

    documents = [Document("a", "Evan Armstrong walked on Mars.", "<t>"), Document("b", "foobar " * 40, "<t>"),
                 Document("c", "Mira Tolland made a violin.", "<t>")]
    size = {d.id: len(encode_text(tokenizer, d.text)) + 1 for d in documents}
    question = Question("q", "Who?")
    limit = 8 + len(encode_text(tokenizer, "Who?")) + 1 + size["a"] + size["c"]  # room for a and c, not b
    contexts = prompt_contexts(tokenizer, [question, Question("q2", "Who?", document="b"),
                                           Question("q3", "Who?", document="c")], documents, limit, 8)
    assert contexts[0] == (documents[0].text + "\n\n" + documents[2].text, ["a", "c"])  # all that fit, in order
    assert contexts[1] is None  # its own document does not fit
    assert contexts[2] == (documents[2].text, ["c"])
