"""The knowledge-injection benchmark (`promptstep inject-eval`): inject N documents, then ask every question of all N.

Data: a document and the questions about it. From a multi-fact Character Description / Reversal Curse triplet (one
context of several facts, one of them queried) the document is the context and its questions are one query per
fact: the facts are read back from the context exactly (`fact_questions`), the queried fact keeps its own query and
the others get a paraphrase of their family's. From any other triplet (wiki-offline, SQuAD, single-fact data) the
document is the context and its questions are the triplets that share it.

Groups: `n_groups` seeded random orders of the documents; the group of size N is the first N documents of an order,
so the document answered first is the same at every N (the "first document after N = 16 vs N = 1" comparison).
After the N-th document is in, every question of the N documents is asked.

Settings (`experiments.INJECTION_METHODS` names them): `nc` (the base model, question alone), `prompt` (base
model, the question's own document in front: the upper bound), `prompt-all` (base model, all N documents in front,
where they fit the window), `meta/MODE` (the one-step model, one inner step per chunk, injected with
`inject.Injector` in mode sequential or sum), `meta+prompt/MODE` (the same weights, the question's document also in
the prompt), `untrained/MODE` (the base model with the same inner step), `adamw-K` (the base model fine-tuned with K
AdamW steps per document on its next-token loss (all its chunks in one batch), a fresh optimizer per document,
documents one after another: the PRAG / context-distillation style baseline). Costs per setting: seconds per
document (injection only), bytes stored per document (the compact update; a full dense delta for AdamW; the
document's UTF-8 text for the prompt settings), and peak memory growth over the setting's run (process RSS on
Linux, allocated memory on CUDA).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.documents import Document, Question
from promptstep.errors import InputError
from promptstep.experiments import INJECTION_METHODS
from promptstep.formats import Format, encode_pair, lm_batch, to_device
from promptstep.inject import (
    InjectOptions,
    Injector,
    answer_questions,
    chunk_size,
    document_stored_bytes,
    split_document,
)
from promptstep.metrics import mean_se
from promptstep.updates import InnerStep, ParamDict, lm_loss, swapped_parameters

SCORES = ("em", "tok_acc", "nll", "f1", "distractor")


# ------------------------------------------------------------------------------------------------------------ data


def fact_questions(triplet: Triplet) -> list[tuple[str, str, tuple[str, ...]]] | None:
    """(query, answer, distractors) of every fact of a multi-fact synthetic triplet, in context order; None when the
    triplet does not carry the tags to read its facts back, or its context is not made of them exactly.

    Each fact is matched as the exact text `render_fact` gives for its family (from the `fact_families` tag), one of
    the family's fillers, its name (answer and distractors in context order) and one of the phrasings.
    """
    from promptstep.data.synthetic import FACT_TEMPLATES, FAMILIES, TASK_ORDER, render_fact, render_query

    tags = triplet.tags or {}
    if triplet.distractors is None or "fact_families" not in tags or "position" not in tags:
        return None
    keys = str(tags["fact_families"]).split(",")
    position = int(tags["position"])
    names = list(triplet.distractors)
    names.insert(position, triplet.answer)
    families = {family.key: family for family in FAMILIES}
    if len(keys) != len(names) or any(key not in families for key in keys):
        return None
    task = triplet.id.split("-", 1)[0]
    for order in ([TASK_ORDER[task]] if task in TASK_ORDER else list(FACT_TEMPLATES)):
        facts, cursor = [], 0
        for key, name in zip(keys, names):
            family = families[key]
            match = next(((filler, text) for filler in family.fillers
                          for text in (render_fact(family, filler, name, order, t)
                                       for t in range(len(FACT_TEMPLATES[order])))
                          if triplet.context.startswith(text, cursor)), None)
            if match is None:
                break
            facts.append((family, match[0], name))
            cursor += len(match[1]) + 1
        if len(facts) == len(names) and cursor - 1 == len(triplet.context):
            break
    else:
        return None
    out = []
    for index, (family, filler, name) in enumerate(facts):
        if index == position:
            query = triplet.query
        else:  # a paraphrase of the family's question, fixed by the triplet and the fact
            pick = random.Random(f"promptstep-fact-query:{triplet.id}:{index}").randrange(len(family.paraphrases))
            query = render_query(family, filler, pick)
        out.append((query, name, tuple(n for n in names if n != name)))
    return out


def documents_and_questions(triplets: Sequence[Triplet], source: str = "") -> tuple[list[Document], list[Question],
                                                                                     dict]:
    """Documents (distinct contexts, in order of first appearance, id = the first triplet's id) and their questions:
    one per fact for multi-fact synthetic triplets (`fact_questions`), else the triplets themselves. Also a count of
    how each document's questions were made."""
    documents: dict[str, Document] = {}
    by_context: dict[str, str] = {}
    questions: dict[tuple[str, str], Question] = {}
    counts = {"multi_fact": 0, "triplet": 0}
    for triplet in triplets:
        doc_id = by_context.setdefault(triplet.context, triplet.id)
        if doc_id not in documents:
            documents[doc_id] = Document(doc_id, triplet.context, f"{source}:{triplet.id}" if source else triplet.id)
        facts = fact_questions(triplet)
        if facts is not None and len(facts) > 1:
            counts["multi_fact"] += 1
            made = [Question(f"{triplet.id}/fact{i}", query, (answer,), doc_id, distractors)
                    for i, (query, answer, distractors) in enumerate(facts)]
        else:
            counts["triplet"] += 1
            made = [Question(triplet.id, triplet.query, triplet.answers, doc_id, triplet.distractors or ())]
        for question in made:
            questions.setdefault((doc_id, question.question), question)
    return list(documents.values()), list(questions.values()), {
        "documents": len(documents), "questions": len(questions),
        "questions_from": {"facts of a multi-fact context": counts["multi_fact"], "the triplet": counts["triplet"]}}


# ------------------------------------------------------------------------------------------------------ baselines


def adamw_finetune(model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor], steps: int, lr: float,
                   weight_decay: float) -> ParamDict:
    """`params` after `steps` AdamW steps (a fresh optimizer) on the mean next-token loss of `batch` (detached)."""
    leaves = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    optimizer = torch.optim.AdamW(leaves.values(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(model, leaves, batch).backward()
            optimizer.step()
    return {name: p.detach() for name, p in leaves.items()}


# ----------------------------------------------------------------------------------------------------------- costs


def _proc_status(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim), so the RSS a measurement starts
    from is the memory in use, not what earlier work freed but the allocator kept."""
    import ctypes
    import ctypes.util

    with suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose 'bytes' is set on exit to the peak memory growth over the block: CUDA's peak allocated
    memory on a GPU, else the growth of the process's peak RSS over its RSS on entry (Linux: VmHWM, reset on entry
    through /proc/self/clear_refs after releasing the allocator's free memory); None where neither can be read."""
    result: dict = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        result["bytes"] = torch.cuda.max_memory_allocated(device) - start
        return
    try:
        _release_free_memory()
        Path("/proc/self/clear_refs").write_text("5")
        start = _proc_status("VmRSS")
    except OSError:
        start = None
    yield result
    peak = _proc_status("VmHWM")
    if start is not None and peak is not None:
        result["bytes"] = max(0, peak - start)


# ------------------------------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class BenchmarkOptions:
    """What `run_benchmark` runs: group sizes and count, injection modes, settings, the inner step, the AdamW
    baselines, decoding."""

    sizes: tuple[int, ...] = (1, 4, 16, 64)
    n_groups: int = 3
    modes: tuple[str, ...] = ("sequential", "sum")
    methods: tuple[str, ...] = INJECTION_METHODS
    inject: InjectOptions = field(default_factory=InjectOptions)
    adamw_steps: tuple[int, ...] = (5, 20)
    adamw_lr: float = 1e-4
    adamw_weight_decay: float = 0.01
    max_new_tokens: int = 16
    batch_size: int = 16
    seed: int = 0
    fmt: Format = field(default_factory=Format)


def group_orders(n_documents: int, size: int, n_groups: int, seed: int) -> list[list[int]]:
    """`n_groups` seeded random orders of `size` distinct document indices (a group of N = an order's first N)."""
    if size > n_documents:
        raise InputError(f"groups of {size} documents need at least {size} documents; the data gives {n_documents}")
    rng = random.Random(f"promptstep-inject-eval:{seed}")
    return [rng.sample(range(n_documents), size) for _ in range(n_groups)]


class _Run:
    """One benchmark: models, data and options, and the records and costs it collects."""

    def __init__(self, meta, base, tokenizer, documents, questions, options: BenchmarkOptions, progress: bool):
        from promptstep.models import max_length

        self.meta, self.base, self.tokenizer, self.options = meta, base, tokenizer, options
        self.documents, self.progress = documents, progress
        self.by_document: dict[str, list[Question]] = {}
        for question in questions:
            self.by_document.setdefault(question.document, []).append(question)
        self.window = max_length(base, tokenizer)
        self.records: list[dict] = []
        self.costs: list[dict] = []
        self.peaks: list[dict] = []

    def fits(self, question: Question, context: str | None) -> bool:
        """Whether the prefix with the gold answer, and with the longest generation, fit the model's window."""
        prefix = question.question if context is None else context + self.options.fmt.separator + question.question
        encoded = encode_pair(self.tokenizer, prefix, question.answers[0], self.options.fmt.answer_prefix)
        return max(len(encoded.ids), len(encoded.prefix_ids) + self.options.max_new_tokens) <= self.window

    def answer(self, model, questions: Sequence[Question], contexts: Sequence[str | None] | None = None) -> list[dict]:
        """Records for `questions` (None where the question with its context does not fit the window)."""
        contexts = list(contexts) if contexts is not None else [None] * len(questions)
        fitting = [i for i, (q, c) in enumerate(zip(questions, contexts)) if self.fits(q, c)]
        answered = answer_questions(model, self.tokenizer, [questions[i] for i in fitting],
                                    [contexts[i] for i in fitting], max_new_tokens=self.options.max_new_tokens,
                                    top_k=0, batch_size=self.options.batch_size, fmt=self.options.fmt)
        out: list[dict | None] = [None] * len(questions)
        for i, record in zip(fitting, answered):
            out[i] = record
        return out

    def add(self, setting: str, group: int, size: int, order: Sequence[int], rows: Sequence[dict | None],
            questions: Sequence[Question]) -> None:
        position = {self.documents[i].id: k for k, i in enumerate(order)}
        for question, row in zip(questions, rows):
            record = {"setting": setting, "size": size, "group": group, "position": position[question.document],
                      "document": question.document, "id": question.id, "fits": row is not None}
            if row is not None:
                record.update({k: row[k] for k in ("prediction", "answer", *SCORES) if k in row})
            self.records.append(record)

    def asked(self, order: Sequence[int], size: int) -> list[Question]:
        return [q for i in order[:size] for q in self.by_document.get(self.documents[i].id, [])]

    # ---------------------------------------------------------------- settings without an update

    def without_update(self, orders: list[list[int]]) -> None:
        """nc and prompt: each question answered once, reported in every group that asks it; prompt-all per group
        and size."""
        options = self.options
        used = sorted({i for order in orders for i in order})
        questions = [q for i in used for q in self.by_document.get(self.documents[i].id, [])]
        text = {d.id: d.text for d in self.documents}
        once = {}
        for setting in ("nc", "prompt"):
            if setting in options.methods:
                contexts = None if setting == "nc" else [text[q.document] for q in questions]
                with peak_memory(_device(self.base)) as peak:
                    once[setting] = dict(zip((q.id for q in questions), self.answer(self.base, questions, contexts)))
                self.peaks.append({"setting": setting, "group": None, "peak_bytes": peak["bytes"]})
                if setting == "prompt":
                    self.costs += [{"setting": "prompt", "group": None, "document": self.documents[i].id,
                                    "seconds": 0.0, "stored_bytes": len(self.documents[i].text.encode("utf-8"))}
                                   for i in used]
        for group, order in enumerate(orders):
            for size in options.sizes:
                asked = self.asked(order, size)
                for setting, rows in once.items():
                    self.add(setting, group, size, order, [rows[q.id] for q in asked], asked)
                if "prompt-all" in options.methods:
                    together = "\n\n".join(self.documents[i].text for i in order[:size])
                    with peak_memory(_device(self.base)) as peak:
                        rows = self.answer(self.base, asked, [together] * len(asked))
                    self.add("prompt-all", group, size, order, rows, asked)
                    self.peaks.append({"setting": "prompt-all", "group": group, "peak_bytes": peak["bytes"]})

    # ---------------------------------------------------------------- settings with an update

    def stepped(self, label: str, model, options: InjectOptions, order: Sequence[int], group: int,
                with_prompt: str | None = None) -> None:
        """One group through an Injector: after each size, the group's questions (and, with `with_prompt`, the same
        with each question's document in the prompt, as that setting)."""
        text = {d.id: d.text for d in self.documents}
        with peak_memory(_device(model)) as peak:
            injector = Injector(model, self.tokenizer, options)
            for count, index in enumerate(order, start=1):
                document = self.documents[index]
                result = injector.add(document)
                self.costs.append({"setting": label, "group": group, "document": document.id,
                                   "tokens": result.tokens, "seconds": result.seconds,
                                   "stored_bytes": document_stored_bytes(result.update, model, injector.adapter,
                                                                         options.max_rank)})
                if count in self.options.sizes:
                    asked = self.asked(order, count)
                    with swapped_parameters(model, injector.current):
                        self.add(label, group, count, order, self.answer(model, asked), asked)
                        if with_prompt:
                            rows = self.answer(model, asked, [text[q.document] for q in asked])
                            self.add(with_prompt, group, count, order, rows, asked)
            del injector
        self.peaks.append({"setting": label, "group": group, "peak_bytes": peak["bytes"]})

    def finetuned(self, steps: int, inner: InnerStep, order: Sequence[int], group: int) -> None:
        """One group with k AdamW steps per document, documents one after another."""
        label = f"adamw-{steps}"
        device = _device(self.base)
        with peak_memory(device) as peak:
            current = inner.parameters(self.base)
            current = {name: p.detach() for name, p in current.items()}
            stored = sum(p.numel() * p.element_size() for p in current.values())
            size = chunk_size(self.base, self.tokenizer, self.options.inject.chunk_tokens)
            for count, index in enumerate(order, start=1):
                document = self.documents[index]
                chunks = [list(c.ids) for c in split_document(self.tokenizer, document, size)]
                batch = to_device(lm_batch(chunks, self.tokenizer.pad_token_id), device)  # the chunks together
                started = time.perf_counter()
                current = adamw_finetune(self.base, current, batch, steps, self.options.adamw_lr,
                                         self.options.adamw_weight_decay)
                self.costs.append({"setting": label, "group": group, "document": document.id,
                                   "tokens": sum(map(len, chunks)), "seconds": time.perf_counter() - started,
                                   "stored_bytes": stored})
                if count in self.options.sizes:
                    asked = self.asked(order, count)
                    with swapped_parameters(self.base, current):
                        self.add(label, group, count, order, self.answer(self.base, asked), asked)
            del current
        self.peaks.append({"setting": label, "group": group, "peak_bytes": peak["bytes"]})


def _device(model) -> torch.device:
    return next(model.parameters()).device


def run_benchmark(meta, base, tokenizer, documents: Sequence[Document], questions: Sequence[Question],
                  options: BenchmarkOptions, progress: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """(records, costs, peaks): one record per question asked per setting, group and size; one cost row per document
    injected per setting and group; one peak-memory row per setting and group.

    `meta` is the one-step model (its inject options: `options.inject`), `base` the untrained reference (None: skip
    the `untrained` settings and use `meta` for the base-model settings). Both must share `tokenizer`.
    """
    if base is None:
        base = meta
        options = replace(options, methods=tuple(m for m in options.methods if m != "untrained"))
    missing = [q.id for q in questions if not q.answers]
    if missing:
        raise InputError(f"question '{missing[0]}' has no answer; the benchmark scores every question")
    run = _Run(meta, base, tokenizer, list(documents), list(questions), options, progress)
    orders = group_orders(len(documents), max(options.sizes), options.n_groups, options.seed)
    jobs = [("without-update", None, None)]
    for group in range(options.n_groups):
        for mode in options.modes:
            if "meta" in options.methods or "meta+prompt" in options.methods:
                jobs.append(("meta", mode, group))
            if "untrained" in options.methods:
                jobs.append(("untrained", mode, group))
        if "adamw" in options.methods:
            jobs += [("adamw", steps, group) for steps in options.adamw_steps]
    for kind, detail, group in tqdm(jobs, desc="inject-eval", disable=not progress, unit="job"):
        if kind == "without-update":
            run.without_update(orders)
        elif kind == "adamw":
            run.finetuned(detail, options.inject.inner, orders[group], group)
        else:
            model = meta if kind == "meta" else base
            prompt = f"meta+prompt/{detail}" if kind == "meta" and "meta+prompt" in options.methods else None
            run.stepped(f"{kind}/{detail}", model, replace(options.inject, mode=detail), orders[group], group,
                        with_prompt=prompt)
    return run.records, run.costs, run.peaks


# --------------------------------------------------------------------------------------------------------- summary


def summarize_benchmark(records: Sequence[dict], costs: Sequence[dict], peaks: Sequence[dict]) -> dict:
    """Per setting and size: questions and documents asked, the share that fit the window, and mean ± SE over
    documents (each (group, document) one unit: the mean of its questions) of every score; per setting: seconds and
    stored bytes per document (mean ± SE) and the largest peak memory growth; per setting with sizes 1 and 16 (or
    its largest size), the first document's scores at both and their paired difference over groups."""
    summary: dict = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == setting]
        entry: dict = {"by_size": {}}
        for size in sorted({r["size"] for r in rows}):
            at = [r for r in rows if r["size"] == size]
            scored = [r for r in at if r["fits"]]
            units: dict[tuple, list[dict]] = {}
            for r in scored:
                units.setdefault((r["group"], r["document"]), []).append(r)
            cell: dict = {"questions": len(at), "documents": len({(r["group"], r["document"]) for r in at}),
                          "fits": len(scored) / len(at) if at else 0.0}
            for metric in SCORES if scored else ():
                values = [sum(r[metric] for r in unit) / len(unit) for unit in units.values() if metric in unit[0]]
                if values:
                    cell[metric], cell[f"{metric}_se"] = mean_se(values)
            entry["by_size"][str(size)] = cell
        spent = [c for c in costs if c["setting"] == setting or c["setting"] == _stepped_label(setting)]
        if spent:
            entry["seconds_per_document"], entry["seconds_per_document_se"] = mean_se(c["seconds"] for c in spent)
            entry["stored_bytes_per_document"], _ = mean_se(c["stored_bytes"] for c in spent)
        measured = [p["peak_bytes"] for p in peaks if p["setting"] in (setting, _stepped_label(setting))
                    and p["peak_bytes"] is not None]
        entry["peak_bytes"] = max(measured) if measured else None
        entry["first_document"] = first_document(rows)
        summary[setting] = entry
    return summary


def _stepped_label(setting: str) -> str:
    """The setting whose injection `setting` reuses (meta+prompt/MODE answers with meta/MODE's weights)."""
    return setting.replace("meta+prompt/", "meta/")


def first_document(rows: Sequence[dict], small: int = 1, large: int = 16) -> dict | None:
    """Scores of each group's first document after `small` documents and after `large` (or the largest size there
    is, if 16 was not run): mean ± SE over groups of both, and of their paired difference."""
    sizes = sorted({r["size"] for r in rows})
    if small not in sizes or len(sizes) < 2:
        return None
    large = large if large in sizes else sizes[-1]
    out: dict = {"sizes": [small, large]}
    for metric in ("em", "tok_acc", "nll"):
        pairs = []
        for group in sorted({r["group"] for r in rows}):
            values = []
            for size in (small, large):
                first = [r[metric] for r in rows if r["group"] == group and r["size"] == size and r["position"] == 0
                         and r["fits"] and metric in r]
                values.append(sum(first) / len(first) if first else None)
            if None not in values:
                pairs.append(values)
        if pairs:
            out[metric] = {f"at_{small}": mean_se(p[0] for p in pairs), f"at_{large}": mean_se(p[1] for p in pairs),
                           "change": mean_se(p[1] - p[0] for p in pairs), "groups": len(pairs)}
    return out
