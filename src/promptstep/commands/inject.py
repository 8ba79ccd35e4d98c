"""`promptstep inject`: documents -> the model's inner step on each chunk -> an injected directory (an exact, compact
stored update that `ask` and `models.load_model` load back)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import check_device, positive
from promptstep.documents import INJECTION_MODES as MODES
from promptstep.errors import InputError


@dataclass
class InjectionKeys:
    """The inner step and chunk size of the commands that inject (inject, inject-eval, playground): each left at
    None takes the meta-train run's value (when the model is a run's model/ directory), else promptstep's."""

    lr: float | None = None
    """inner step learning rate (default: the meta-train run's inner_lr, else 1e-3)"""
    steps: int | None = None
    """inner steps per chunk (default: the meta-train run's inner_steps, else 1)"""
    params: str | None = None
    """parameters the inner step updates: a regex, 'kv', or 'all' (default: the meta-train run's inner_params, else
    all)"""
    rule: str | None = None
    """inner rule, sgd or lcgd (default: the meta-train run's inner_rule, else sgd)"""
    chunk_tokens: int | None = None
    """chunk size in tokens (default 512, or the model's window if smaller; at most the window)"""

    def check_injection(self) -> None:
        """Refuse a bad chunk size, inner-step override or mode (for configs that have one), before torch loads."""
        from promptstep.rules import check_rule

        mode = getattr(self, "mode", MODES[0])
        if mode not in MODES:
            raise InputError(f"unknown injection mode '{mode}' (choose from {', '.join(MODES)})")
        if self.chunk_tokens is not None and self.chunk_tokens < 2:
            raise InputError(f"config key 'chunk_tokens' must be at least 2, got {self.chunk_tokens}")
        if self.lr is not None and self.lr < 0:
            raise InputError(f"config key 'lr' must be >= 0, got {self.lr}")
        if self.steps is not None:
            positive("steps", self.steps)
        if self.rule is not None:
            check_rule(self.rule)

    def inject_options(self, spec: str):
        """(InjectOptions, where the inner step came from) for model `spec` (mode, chunking and max_rank from the
        config where it has them)."""
        from promptstep.inject import InjectOptions, resolve_inner_step

        inner, source = resolve_inner_step(spec, self.lr, self.steps, self.params, self.rule)
        options = InjectOptions(inner=inner, mode=getattr(self, "mode", MODES[0]), chunk_tokens=self.chunk_tokens,
                                chunking=getattr(self, "chunking", True), max_rank=getattr(self, "max_rank", None))
        options.validate()
        return options, source


@dataclass
class InjectConfig(InjectionKeys):
    """`promptstep inject --model M --docs FILE|DIR --out DIR`: inject documents into a model's weights."""

    model: str = "tiny"
    """the model to inject into: an embedded name, a model directory (a meta-train run's `model/` brings its own
    inner step), a hub id"""
    docs: str = ""
    """the documents: a .txt / .md file, a .jsonl of {"id", "text"} objects, or a directory of .txt / .md files"""
    out: str = ""
    """the injected directory to write (replaced only with --overwrite true, and only when complete)"""
    mode: str = "sequential"
    """sequential: each chunk steps from the weights the previous one left; sum: each chunk steps from the base
    weights and the changes add"""
    chunking: bool = True
    """split documents longer than one chunk (false: refuse them)"""
    per_document: bool = False
    """also keep each document's own update in documents/NNNN-ID/ (they combine exactly)"""
    merged: bool = False
    """also write the updated model itself in merged/ (loadable by transformers alone; as large as the model)"""
    max_rank: int | None = None
    """truncate each stored low-rank change to this rank (SVD; the error is reported); default: exact"""
    attn: str = "eager"
    """attention implementation to load the model with"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    trust_remote_code: bool = False
    """run a hub model's own Python code (read it first)"""
    overwrite: bool = False
    """replace an existing injected directory at --out"""

    def validate(self) -> None:
        if not self.docs:
            raise InputError("inject needs --docs (a text file, a .jsonl of documents, or a directory)")
        if not self.out:
            raise InputError("inject needs --out DIR (the injected directory to write)")
        if self.max_rank is not None:
            positive("max_rank", self.max_rank)
        self.check_injection()
        check_device(self.device)


def recorded_spec(spec: str) -> str:
    """How an injected directory names its base model: a local directory as an absolute path (so it loads from any
    working directory), anything else as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def run_inject(config: InjectConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    """Read and check the documents, step on them, and publish the injected directory; print what it holds."""
    from promptstep.commands.common import load_from_config
    from promptstep.documents import read_documents
    from promptstep.inject import inject, save_injection
    from promptstep.runs import check_run_dir

    out = Path(config.out)
    documents = read_documents(config.docs)
    check_run_dir(out, config.overwrite)
    options, source = config.inject_options(config.model)
    model, tokenizer = model_and_tokenizer or load_from_config(config)
    if config.merged:
        from promptstep.inject import carries_adapter

        if carries_adapter(model):
            raise InputError("--merged is not available for a model that carries a PEFT adapter (LoRA-inner): its "
                             "update is the stepped adapter, stored as a PEFT adapter in update/")
    injection = inject(model, tokenizer, documents, options, progress=True)
    manifest = save_injection(out, injection, model, tokenizer, per_document=config.per_document,
                              merged=config.merged, model_spec=recorded_spec(config.model),
                              overwrite=config.overwrite, inner_source=source)
    inner = options.inner
    tokens = sum(row["tokens"] for row in manifest["documents"])
    print(f"injected {len(documents)} document(s), {tokens} tokens in {injection.chunk_tokens}-token chunks, mode "
          f"{options.mode}, inner step lr={inner.lr:g} steps={inner.steps} params={inner.params or 'all'} "
          f"rule={inner.rule} (from {source['source']}"
          + (f"; overridden: {', '.join(source['overridden'])}" if source["overridden"] else "") + ")")
    print(f"{manifest['seconds']['inject']:.2f} s stepping, update {manifest['update']['stored_bytes'] / 2**20:.2f} MB "
          f"-> {out} (ask with: promptstep ask --injected {out} --question ...)")
    return out, manifest
