"""`promptstep ask`: answer questions with a model and its injected documents, optionally side by side with the
model without them and with the documents in the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import check_device, positive
from promptstep.errors import InputError

SETTINGS = {"nc": "no context", "injected": "injected", "prompt": "prompt"}


@dataclass
class AskConfig:
    """`promptstep ask [--model M] [--injected DIR ...] --question TEXT | --questions FILE.jsonl`: greedy answers."""

    model: str | None = None
    """the base model (default: the one the first --injected directory was made from)"""
    injected: tuple[str, ...] = ()
    """injected directories (comma-separated; several combine exactly; each must be made from --model)"""
    question: str | None = None
    """one question (the text the answer follows, e.g. 'The first person on Mars was')"""
    questions: str | None = None
    """a .jsonl of {"id", "question"} objects, optionally with "answer" / "answers" (scored), "document" (the id of
    the document it is about) and "distractors\""""
    docs: str | None = None
    """documents for the prompt column of --compare (default: those stored in the --injected directories)"""
    compare: bool = False
    """answer three ways: no context (the base model), injected, and the question's document (or all documents that
    fit) in the prompt of the base model"""
    top_k: int = 5
    """how many of the most probable next tokens to show per answer"""
    max_new_tokens: int = 32
    """longest answer in tokens (answers stop at the end of their first line)"""
    batch_size: int = 16
    """questions answered together"""
    out: str | None = None
    """write records.jsonl, summary.json, metrics.csv and config.yaml to this directory"""
    overwrite: bool = False
    """replace an existing --out directory"""
    attn: str = "eager"
    """attention implementation to load the model with"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    trust_remote_code: bool = False
    """run a hub model's own Python code (read it first)"""

    def validate(self) -> None:
        if (self.question is None) == (self.questions is None):
            raise InputError("ask needs one of --question TEXT or --questions FILE.jsonl")
        if self.question is not None and not self.question.strip():
            raise InputError("--question is empty")
        if self.model is None and not self.injected:
            raise InputError("ask needs --model or --injected DIR (whose base model it then loads)")
        for key in ("top_k", "max_new_tokens", "batch_size"):
            positive(key, getattr(self, key))
        check_device(self.device)


def injected_documents(source: str | Path) -> list:
    """The documents stored with an injected directory (its documents.jsonl; for one of its per-document update
    directories, that document's), or [] if there are none."""
    from promptstep.adapters import read_info, update_dir
    from promptstep.documents import read_documents
    from promptstep.inject import DOCUMENTS_FILE

    directory = update_dir(source)
    for root in (Path(source), directory.parent, directory.parent.parent):
        if (root / DOCUMENTS_FILE).is_file():
            wanted = set(read_info(directory).get("documents", []))
            return [d for d in read_documents(root / DOCUMENTS_FILE) if d.id in wanted]
    return []


def prompt_contexts(tokenizer, questions, documents, limit: int, max_new_tokens: int) -> list[tuple[str, list] | None]:
    """Per question, (context, document ids) for the Prompt column: its own document if it names one, else every
    document (in order) that still fits; None when not even its own document fits in `limit` tokens with the
    question and the answer."""
    from promptstep.formats import encode_text

    by_id = {d.id: d for d in documents}
    contexts = []
    for question in questions:
        budget = limit - max_new_tokens - len(encode_text(tokenizer, question.question)) - 1
        chosen = [by_id[question.document]] if question.document in by_id else documents
        kept, used = [], 0
        for document in chosen:
            size = len(encode_text(tokenizer, document.text)) + 1
            if used + size <= budget:
                kept.append(document)
                used += size
        contexts.append(("\n\n".join(d.text for d in kept), [d.id for d in kept]) if kept else None)
    return contexts


def _top_text(top) -> str:
    return "  ".join(f"{token!r} {p:.2f}" for token, p in top)


def _print_answers(questions, by_setting: dict[str, list[dict]], labels: dict[str, str]) -> None:
    for index, question in enumerate(questions):
        print(f"[{question.id}] {question.question}")
        width = max(len(labels[s]) for s in by_setting)
        for setting, records in by_setting.items():
            record = records[index]
            if record.get("skipped"):
                print(f"  {labels[setting]:<{width}} : ({record['skipped']})")
                continue
            mark = "" if "em" not in record else ("  [right]" if record["em"] else "  [wrong]")
            print(f"  {labels[setting]:<{width}} : {record['prediction']!r}{mark}   top: {_top_text(record['top'])}")
        if question.answers:
            print(f"  {'gold':<{width}} : {question.answers[0]!r}")


def summarize_answers(by_setting: dict[str, list[dict]]) -> dict[str, dict]:
    """Per setting: questions answered and, over those with gold answers, mean ± SE of each score."""
    from promptstep.metrics import mean_se

    summary = {}
    for setting, records in by_setting.items():
        answered = [r for r in records if not r.get("skipped")]
        scored = [r for r in answered if "em" in r]
        entry: dict = {"n": len(answered), "scored": len(scored)}
        for metric in ("em", "starts", "f1", "tok_acc", "nll", "distractor") if scored else ():
            entry[metric], entry[f"{metric}_se"] = mean_se(r[metric] for r in scored)
        summary[setting] = entry
    return summary


def run_ask(config: AskConfig, model_and_tokenizer=None) -> dict:
    """Answer the questions (each setting in turn, the injected one last: attaching the update changes the model in
    place), print them side by side, and write the run files if --out is given."""
    import torch

    from promptstep.adapters import read_info, update_dir
    from promptstep.config import config_dict
    from promptstep.documents import Question, read_documents, read_questions
    from promptstep.inject import answer_questions
    from promptstep.models import load_injected, max_length
    from promptstep.runs import check_run_dir, staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml

    dirs = [update_dir(source) for source in config.injected]
    infos = [read_info(d) for d in dirs]
    if config.docs:
        documents = read_documents(config.docs)
    else:
        documents = [d for source in config.injected for d in injected_documents(source)]
    ids = {d.id for d in documents}
    if config.question is not None:
        questions = [Question(id="q1", question=config.question.strip())]
    else:
        questions = read_questions(config.questions, ids if config.docs else None)
    if config.compare and not documents:
        print("ask: no documents for the prompt column (give --docs); comparing no context and injected only")
    if config.out:
        check_run_dir(Path(config.out), config.overwrite)

    spec = config.model or str(infos[0]["base"].get("spec"))
    if model_and_tokenizer is None:
        from promptstep.distributed import resolve_device
        from promptstep.models import load_model

        dtype = getattr(torch, str(infos[0]["base"].get("dtype")), None) if infos and not config.model else None
        model, tokenizer = load_model(spec, dtype=dtype, attn_implementation=config.attn,
                                      device=resolve_device(config.device), trust_remote_code=config.trust_remote_code)
    else:  # the caller's model: with --injected it is changed in place
        model, tokenizer = model_and_tokenizer
    if dirs:  # refuse another base model's update before answering anything
        from promptstep.adapters import check_base
        from promptstep.models import fingerprint

        mark, dtype = fingerprint(model), next(model.parameters()).dtype
        for directory, info in zip(dirs, infos):
            check_base(directory, info, mark, dtype)

    def answer(contexts=None) -> list[dict]:
        return answer_questions(model, tokenizer, questions, contexts, max_new_tokens=config.max_new_tokens,
                                top_k=config.top_k, batch_size=config.batch_size)

    by_setting: dict[str, list[dict]] = {}
    if config.compare:
        by_setting["nc"] = answer()
        if documents:
            chosen = prompt_contexts(tokenizer, questions, documents, max_length(model, tokenizer),
                                     config.max_new_tokens)
            fitting = [i for i, c in enumerate(chosen) if c is not None]
            answered = iter(answer_questions(model, tokenizer, [questions[i] for i in fitting],
                                             [chosen[i][0] for i in fitting], max_new_tokens=config.max_new_tokens,
                                             top_k=config.top_k, batch_size=config.batch_size))
            by_setting["prompt"] = [
                {**next(answered), "prompt_documents": chosen[i][1]} if chosen[i] is not None else
                {"id": q.id, "question": q.question, "skipped": "its document does not fit in the model's window"}
                for i, q in enumerate(questions)]
    if dirs:
        model, _ = load_injected(dirs, model=model, tokenizer=tokenizer)
    by_setting["injected"] = answer()
    order = [s for s in ("nc", "injected", "prompt") if s in by_setting]
    by_setting = {s: by_setting[s] for s in order}
    labels = {**SETTINGS, "injected": "injected" if dirs else "model"}
    _print_answers(questions, by_setting, labels)
    summary = summarize_answers(by_setting)
    if any(entry["scored"] for entry in summary.values()):
        for setting, entry in summary.items():
            if entry["scored"]:
                print(f"{labels[setting]}: EM {100 * entry['em']:.1f} ± {100 * entry['em_se']:.1f} %, token accuracy "
                      f"{100 * entry['tok_acc']:.1f} ± {100 * entry['tok_acc_se']:.1f} %, NLL "
                      f"{entry['nll']:.3f} ± {entry['nll_se']:.3f} (n = {entry['scored']})")
    if config.out:
        with staged_dir(Path(config.out), config.overwrite) as stage:
            write_yaml(stage / "config.yaml", config_dict(config))
            write_jsonl(stage / "records.jsonl", [{"setting": s, **r} for s, rows in by_setting.items() for r in rows])
            write_json(stage / "summary.json", {"kind": "ask", "model": spec, "injected": list(config.injected),
                                                "settings": summary})
            write_summary_csv(stage / "metrics.csv", summary)
        print(f"answers in {config.out}")
    return summary
