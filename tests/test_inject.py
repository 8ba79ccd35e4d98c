"""Knowledge injection: reading documents, chunking, the per-chunk inner step (sequential / sum), the exact compact
stored form (PEFT LoRA + side-car), truncation, combining per-document updates, and refusing bad input.

Logit checks are fp32 and pass when max |logits - stepped logits| <= 1e-5 * max(1, max |stepped logits|); the step
itself moves the logits by far more (asserted), so a missing or wrong part of the update cannot hide under it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch.func import functional_call

from conftest import make_gpt2, make_llama
from promptstep.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SIDECAR, apply_update, read_update
from promptstep.documents import Document, read_documents
from promptstep.errors import InputError
from promptstep.inject import InjectOptions, chunk_size, inject, save_injection, split_document
from promptstep.models import load_injected, load_model
from promptstep.updates import InnerStep

SHORT = ["The foo of the bar.", "The bar of the foo."]  # 8 tokens each with the test tokenizer
PROBE = "Mira Tolland is the inventor of the glass"
LR = 0.5


def _docs(*texts: str) -> list[Document]:
    return [Document(f"d{i}", text, f"<test {i}>") for i, text in enumerate(texts)]


def _probe(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(PROBE).input_ids])


def _logits(model, ids, params=None) -> torch.Tensor:
    with torch.no_grad():
        if params is None:
            return model(input_ids=ids).logits
        return functional_call(model, params, args=(), kwargs={"input_ids": ids}).logits


def _assert_close(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> None:
    scale = max(1.0, want.abs().max().item())
    assert (want - base).abs().max().item() > 1e-2 * scale, "the step barely moved the logits; the check is vacuous"
    assert (got - want).abs().max().item() <= 1e-5 * scale


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory, tokenizer) -> str:
    path = tmp_path_factory.mktemp("llama")
    make_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------- reading


def test_read_documents_from_a_file_a_jsonl_and_a_directory(tmp_path):
    (tmp_path / "one.txt").write_text("\ufeff  Hello there.\n\n", encoding="utf-8")
    assert [(d.id, d.text) for d in read_documents(tmp_path / "one.txt")] == [("one.txt", "Hello there.")]
    rows = [{"id": "b", "text": "Second."}, {"id": "a", "text": "First."}]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    docs = read_documents(tmp_path / "docs.jsonl")
    assert [(d.id, d.text, d.source.endswith(":2")) for d in docs] == [("b", "Second.", False), ("a", "First.", True)]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "z.md").write_text("# Zed", encoding="utf-8")
    (folder / "sub" / "a.txt").write_text("Ay.", encoding="utf-8")
    (folder / ".hidden.bin").write_bytes(b"\x00\x01")
    assert [d.id for d in read_documents(folder)] == ["sub/a.txt", "z.md"]


BAD_DOCUMENTS = [
    # (files to write, path to read, expected message)
    ({"e.txt": "  \n\n "}, "e.txt", r"e\.txt: empty document"),
    ({"b.txt": b"abc\x00def"}, "b.txt", r"b\.txt: binary file"),
    ({"u.md": b"ok\n\xff\xfe"}, "u.md", r"u\.md:2: not UTF-8 text"),
    ({"x.pdf": "text"}, "x.pdf", r"x\.pdf: unknown suffix '\.pdf'"),
    ({"d/a.txt": "fine", "d/b.rtf": "no"}, "d", r"b\.rtf: unknown suffix '\.rtf'"),
    ({"d/.keep": ""}, "d", r"d: empty directory"),
    ({"d/a.txt": "fine", "d/b.txt": ""}, "d", r"b\.txt: empty document"),
    ({"j.jsonl": '{"id": "a", "text": "x"}\nnot json\n'}, "j.jsonl", r"j\.jsonl:2: not valid JSON"),
    ({"j.jsonl": '{"id": "a"}\n'}, "j.jsonl", r"j\.jsonl:1: missing field 'text'"),
    ({"j.jsonl": '{"id": "a", "text": " "}\n'}, "j.jsonl", r"j\.jsonl:1: field 'text' is empty \(empty document\)"),
    ({"j.jsonl": '{"id": 3, "text": "x"}\n'}, "j.jsonl", r"j\.jsonl:1: field 'id' must be a string"),
    ({"j.jsonl": '{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n'}, "j.jsonl",
     r"j\.jsonl:3: duplicate id 'a' \(first on line 1\)"),
    ({"j.jsonl": "\n\n"}, "j.jsonl", r"j\.jsonl: holds no documents"),
    ({}, "missing.txt", r"missing\.txt: no such file or directory"),
]


@pytest.mark.parametrize("files, target, message", BAD_DOCUMENTS, ids=[m for _, _, m in BAD_DOCUMENTS])
def test_bad_documents_are_one_line_input_errors(tmp_path, files, target, message):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message) as err:
        read_documents(tmp_path / target)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------------- chunking


def test_chunks_fit_the_size_and_cut_on_boundaries(tokenizer, gpt2):
    paragraphs = ["The foo of the bar. The bar of the foo. Evan Armstrong walked on Mars.",
                  "The first person on Mars is Evan Armstrong. Who painted the ceiling? Michelangelo."]
    doc = Document("long", "\n\n".join(paragraphs), "<test>")
    chunks = split_document(tokenizer, doc, 20)
    assert len(chunks) >= 3 and all(2 <= c.tokens <= 20 for c in chunks)
    assert all(list(c.ids) == tokenizer(c.text).input_ids for c in chunks)
    assert " ".join(c.text for c in chunks).split() == doc.text.split()  # nothing lost, nothing added
    assert all(c.text.endswith((".", "?")) for c in chunks)  # cut at sentence ends
    size = max(len(tokenizer(p).input_ids) for p in paragraphs)
    assert [c.text for c in split_document(tokenizer, doc, size)] == paragraphs  # paragraphs first
    assert len(split_document(tokenizer, doc, 200)) == 1
    with pytest.raises(InputError, match=r"document 'long' \(<test>\) is \d+ tokens, longer than one chunk of 20"):
        split_document(tokenizer, doc, 20, chunking=False)
    word = Document("word", "foobar" * 40, "<test>")  # one word over the size: cut by tokens
    assert all(c.tokens <= 8 for c in split_document(tokenizer, word, 8))
    assert chunk_size(gpt2, tokenizer) == 256
    with pytest.raises(InputError, match="over the model's window of 256"):
        chunk_size(gpt2, tokenizer, 300)


# ------------------------------------------------------------------------------------------------- exact stored form


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_stored_adapter_reproduces_the_stepped_model(kind, tokenizer, saved_gpt2, saved_llama, tmp_path):
    spec = {"gpt2": saved_gpt2, "llama": saved_llama}[kind]
    base, _ = load_model(spec)
    injection = inject(base, tokenizer, _docs(*SHORT), InjectOptions(inner=InnerStep(lr=LR)), keep_stepped=True)
    manifest = save_injection(tmp_path / "inj", injection, base, tokenizer, merged=True, model_spec=spec)
    ids = _probe(tokenizer)
    want, before = _logits(base, ids, injection.stepped), _logits(base, ids)

    update_dir = tmp_path / "inj" / "update"
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, SIDECAR} <= {p.name for p in update_dir.iterdir()}
    info = json.loads((update_dir / "update.json").read_text())
    tied = [m for m, e in info["lora_modules"].items() if not e["primary"]]
    assert tied and info["lora_modules"]["lm_head"]["kind"] == "linear"  # the tied head and its input embedding
    if kind == "llama":  # k/v (32x16) at rank 14 cost more as factors: stored dense
        assert manifest["update"]["parameters"]["model.layers.0.self_attn.k_proj.weight"]["dense"]
    else:
        assert info["lora_modules"]["transformer.h.0.attn.c_attn"]["kind"] == "conv1d"

    loaded, _ = load_injected(tmp_path / "inj")  # the base from the recorded spec; the adapter through peft
    assert isinstance(loaded, PeftModel)
    _assert_close(_logits(loaded, ids), want, before)
    merged, _ = load_injected(tmp_path / "inj", merged=True)
    _assert_close(_logits(merged, ids), want, before)
    plain, _ = load_model(str(tmp_path / "inj" / "merged"))  # the merged form: transformers alone
    _assert_close(_logits(plain, ids), want, before)


def test_dense_fallback_rules_and_long_chunks_stay_exact(tokenizer, tmp_path):
    """A rule that is not the plain LM gradient (Layer-Causal GD), two steps, and chunks whose rank makes the dense
    form cheaper: every path still reproduces the stepped model."""
    base = make_llama(len(tokenizer))
    ids = _probe(tokenizer)
    steps = [InnerStep(lr=LR, rule="lcgd"), InnerStep(lr=LR, steps=2), InnerStep(lr=LR, params=r"mlp|embed")]
    for number, options in enumerate(InjectOptions(inner=step) for step in steps):
        docs = _docs(SHORT[0], "Mira Tolland is the inventor of the glass violin.")
        injection = inject(base, tokenizer, docs, options, keep_stepped=True)
        save_injection(tmp_path / str(number), injection, base, tokenizer, model_spec="llama")
        loaded, _ = load_injected(tmp_path / str(number), model=copy.deepcopy(base))
        _assert_close(_logits(loaded, ids), _logits(base, ids, injection.stepped), _logits(base, ids))


# ------------------------------------------------------------------------------------------------------------ modes


def _manual_sgd(model, params: dict, chunks, lr: float) -> dict:
    """One hand-written SGD step on each chunk's mean next-token NLL, from `params`."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    ids = torch.tensor([list(chunks.ids)])
    logits = functional_call(model, params, args=(), kwargs={"input_ids": ids}).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: (p - lr * g).detach() for (n, p), g in zip(params.items(), grads)}


@pytest.mark.parametrize("mode", ["sequential", "sum"])
def test_modes_match_hand_computed_steps(mode, tokenizer):
    model = make_gpt2(len(tokenizer))
    text = "The foo of the bar. The bar of the foo. Who painted the ceiling? Michelangelo"
    options = InjectOptions(inner=InnerStep(lr=0.3, params=r"attn|wte"), mode=mode, chunk_tokens=18)
    injection = inject(model, tokenizer, _docs(text), options, keep_stepped=True)
    chunks = injection.documents[0].chunks
    assert len(chunks) == 3
    base = {n: p.detach() for n, p in model.named_parameters() if "attn" in n or "wte" in n}
    if mode == "sequential":
        want = base
        for chunk in chunks:
            want = _manual_sgd(model, want, chunk, 0.3)
    else:
        want = dict(base)
        for chunk in chunks:
            stepped = _manual_sgd(model, base, chunk, 0.3)
            want = {n: want[n] + (stepped[n] - base[n]) for n in base}
    assert set(injection.stepped) == set(want)
    total = injection.total
    for name in want:
        assert torch.allclose(injection.stepped[name], want[name], atol=1e-6, rtol=0), name
        captured = base[name] + (total[name].to_dense() if name in total else 0)
        assert torch.allclose(captured, want[name], atol=1e-6, rtol=0), name


# ----------------------------------------------------------------------------------------------- ranks, truncation


def test_rank_bound_and_svd_optimal_truncation(tokenizer, tmp_path):
    model = make_llama(len(tokenizer))
    docs = _docs(SHORT[0])
    tokens = len(tokenizer(SHORT[0]).input_ids)
    injection = inject(model, tokenizer, docs, InjectOptions(inner=InnerStep(lr=LR)))
    update = injection.total
    factored = {n: d for n, d in update.items() if d.B is not None}
    assert len(factored) >= 10
    assert all(d.rank <= tokens for d in update.values())  # rank <= T (in fact <= T - 1: the last token has no loss)
    two = inject(model, tokenizer, _docs(*SHORT), InjectOptions(inner=InnerStep(lr=LR), chunk_tokens=8)).total
    # ranks add
    assert all(d.rank <= 2 * tokens for d in two.values()) and max(d.rank for d in two.values()) > tokens

    rank = 3
    injection_cut = inject(model, tokenizer, docs, InjectOptions(inner=InnerStep(lr=LR), max_rank=rank))
    manifest = save_injection(tmp_path / "cut", injection_cut, model, tokenizer, model_spec="llama")
    stored = read_update(tmp_path / "cut", model)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        exact = update[name].to_dense().double()
        singular = torch.linalg.svd(exact).S
        optimal = math.sqrt(singular[rank:].square().sum() / singular.square().sum())
        report = manifest["update"]["parameters"][name]
        assert report["lora_rank"] == rank and stored[name].rank == rank
        assert report["truncation_error"] == pytest.approx(optimal, rel=1e-6)
        actual = (stored[name].to_dense().double() - exact).norm() / exact.norm()
        assert actual.item() == pytest.approx(optimal, rel=1e-5)
    embed = manifest["update"]["parameters"]["model.embed_tokens.weight"]  # the rows stay exact beside the cut head
    assert embed["lora_rank"] == rank and embed["rows"] > 0


# ---------------------------------------------------------------------------------------------------- combination


def test_per_document_updates_combine_to_the_sum_mode(tokenizer, saved_llama, tmp_path):
    base, _ = load_model(saved_llama)
    texts = [SHORT[0], SHORT[1], "Who painted the ceiling? Michelangelo"]
    options = InjectOptions(inner=InnerStep(lr=LR), mode="sum")
    together = inject(base, tokenizer, _docs(*texts), options, keep_stepped=True)
    manifest = save_injection(tmp_path / "all", together, base, tokenizer, per_document=True, model_spec=saved_llama)
    ids = _probe(tokenizer)
    want, before = _logits(base, ids, together.stepped), _logits(base, ids)

    alone = []  # each document injected on its own, in separate runs, then combined
    for number, text in enumerate(texts):
        injection = inject(base, tokenizer, [Document(f"d{number}", text, "<test>")], options)
        save_injection(tmp_path / f"one{number}", injection, base, tokenizer, model_spec=saved_llama)
        alone.append(tmp_path / f"one{number}")
    subdirs = [tmp_path / "all" / row["directory"] for row in manifest["documents"]]
    for sources in (alone, subdirs):
        for merged in (False, True):
            combined, _ = load_injected(sources, merged=merged)
            _assert_close(_logits(combined, ids), want, before)


# ----------------------------------------------------------------------------------------------------- bad inputs


def test_bad_injection_inputs_are_one_line_input_errors(tokenizer, tmp_path):
    model = make_gpt2(len(tokenizer), n_positions=16)
    long_doc = _docs("Mira Tolland is the inventor of the glass violin.")  # 31 tokens, over the 16-token window
    cases = [
        (lambda: inject(model, tokenizer, long_doc, InjectOptions(chunking=False)),
         r"document 'd0' \(<test 0>\) is 31 tokens, longer than one chunk of 16 tokens"),
        (lambda: inject(model, tokenizer, _docs("a"), InjectOptions()), r"document 'd0' .* is 1 token long"),
        (lambda: inject(model, tokenizer, _docs(SHORT[0]), InjectOptions(mode="mean")), r"unknown injection mode"),
        (lambda: inject(model, tokenizer, _docs(SHORT[0]), InjectOptions(inner=InnerStep(params="("))),
         r"not a valid regex"),
        (lambda: load_injected(tmp_path / "nothing"), r"no such injected directory"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    chunks = inject(model, tokenizer, long_doc, InjectOptions(inner=InnerStep(lr=LR))).documents[0].chunks
    assert len(chunks) >= 2 and all(c.tokens <= 16 for c in chunks)

    injection = inject(model, tokenizer, _docs(SHORT[0]), InjectOptions(inner=InnerStep(lr=LR)))
    save_injection(tmp_path / "inj", injection, model, tokenizer, model_spec="gpt2-16")
    other = make_gpt2(len(tokenizer), seed=1, n_positions=16)
    for sources in (tmp_path / "inj", [tmp_path / "inj"]):
        with pytest.raises(InputError, match=r"update: injected into another base model \('gpt2-16'") as err:
            load_injected(sources, model=other)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="not the base model the documents were injected into"):
        save_injection(tmp_path / "again", injection, other, tokenizer)
    with pytest.raises(InputError, match="already exists"):
        save_injection(tmp_path / "inj", injection, model, tokenizer)


def test_merged_form_equals_the_exact_form(tokenizer, tmp_path):
    model = make_gpt2(len(tokenizer))
    injection = inject(model, tokenizer, _docs(*SHORT), InjectOptions(inner=InnerStep(lr=LR), mode="sequential"),
                       keep_stepped=True)
    manifest = save_injection(tmp_path / "inj", injection, model, tokenizer, merged=True, model_spec="gpt2")
    exact = copy.deepcopy(model)
    apply_update(exact, read_update(tmp_path / "inj", model))
    merged, _ = load_model(str(tmp_path / "inj" / "merged"))
    for (name, p), (other, q) in zip(exact.state_dict().items(), merged.state_dict().items()):
        assert name == other and torch.equal(p, q), name
    for name, p in exact.named_parameters():
        assert torch.allclose(p, injection.stepped.get(name, p), atol=1e-6, rtol=0), name
    assert manifest["merged"]["stored_bytes"] > 0 and manifest["update"]["stored_bytes"] > 0
    row = manifest["documents"][1]
    assert row["chunk_tokens"] == [8] and row["seconds"] >= 0 and manifest["base"]["fingerprint"]
    assert Path(tmp_path / "inj" / "manifest.json").is_file()
