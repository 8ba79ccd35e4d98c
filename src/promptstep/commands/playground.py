"""`promptstep playground`: a local web page (127.0.0.1 only) where a person pastes a document, injects it into the
model with one inner step, asks questions, and sees the answers with no context, with the injected documents and
with the documents in the prompt side by side, each with its most probable next tokens.

Built on gradio, an optional extra (`pip install 'promptstep[playground]'`); it runs offline: analytics off, no
share link, no server-side rendering, and the page loads nothing from outside the local server.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from promptstep.commands.common import check_device, positive
from promptstep.commands.inject import InjectionKeys
from promptstep.errors import InputError

HOST = "127.0.0.1"  # the page is only ever served to this machine
COLUMNS = (("nc", "No context"), ("injected", "Injected"), ("prompt", "Documents in the prompt"))
EXTRA = "pip install 'promptstep[playground]'"


@dataclass
class PlaygroundConfig(InjectionKeys):
    """`promptstep playground --model M`: a local web page to inject documents and ask questions."""

    model: str = "tiny"
    """the model to inject into (a meta-train run's model/ directory brings its own inner step)"""
    port: int = 7860
    """the port on 127.0.0.1 to serve the page on"""
    mode: str = "sequential"
    """how the documents injected one after another combine: sequential or sum"""
    top_k: int = 5
    """most probable next tokens shown per answer"""
    max_new_tokens: int = 32
    """longest answer in tokens"""
    attn: str = "eager"
    """attention implementation to load the model with"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    trust_remote_code: bool = False
    """run a hub model's own Python code (read it first)"""

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InputError(f"config key 'port' must be in 1..65535, got {self.port}")
        for key in ("top_k", "max_new_tokens"):
            positive(key, getattr(self, key))
        self.check_injection()
        check_device(self.device)


def _gradio():
    """The gradio module, with its analytics off; InputError naming the extra when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SERVER_NAME", HOST)
    try:
        import gradio
    except ImportError:
        raise InputError(f"the playground needs its optional extra (the gradio web UI library): {EXTRA}") from None
    return gradio


class Playground:
    """The model, the documents injected so far (an `inject.Injector`) and the three ways of answering; one request
    at a time (a lock), since they share the model."""

    def __init__(self, model, tokenizer, options, *, top_k: int = 5, max_new_tokens: int = 32) -> None:
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.top_k, self.max_new_tokens = top_k, max_new_tokens
        self.lock = threading.Lock()
        self.injector = None
        self.documents: list = []

    def inject(self, text: str) -> str:
        """Inject one pasted document; a status line for the page."""
        from promptstep.documents import Document
        from promptstep.inject import Injector

        text = (text or "").strip()
        if not text:
            return "Paste a document first."
        with self.lock:
            if self.injector is None:
                self.injector = Injector(self.model, self.tokenizer, self.options)
            document = Document(f"doc{len(self.documents) + 1}", text, "playground")
            try:
                result = self.injector.add(document)
            except InputError as err:
                return f"Not injected: {err}"
            self.documents.append(document)
            tokens = sum(d.tokens for d in self.injector.documents)
        inner = self.options.inner
        return (f"Injected {len(self.documents)} document(s), {tokens} tokens (this one: {result.tokens} tokens in "
                f"{len(result.chunks)} chunk(s), {result.seconds:.2f} s; inner step lr={inner.lr:g}, "
                f"{inner.steps} step(s), mode {self.options.mode}).")

    def reset(self) -> str:
        with self.lock:
            self.injector, self.documents = None, []
        return "No documents injected; the model is back to its own weights."

    def ask(self, question: str) -> dict[str, dict]:
        """{column: {"answer": text, "top": {token: probability}}} for the three columns."""
        from promptstep.commands.ask import prompt_contexts
        from promptstep.documents import Question
        from promptstep.inject import answer_questions
        from promptstep.models import max_length
        from promptstep.updates import swapped_parameters

        question = (question or "").strip()
        if not question:
            return {key: {"answer": "(ask a question)", "top": {}} for key, _ in COLUMNS}
        asked = [Question("q", question)]

        def answer(contexts=None) -> dict:
            (record,) = answer_questions(self.model, self.tokenizer, asked, contexts, top_k=self.top_k,
                                         max_new_tokens=self.max_new_tokens)
            return {"answer": record["prediction"], "top": {repr(token): p for token, p in record["top"]}}

        with self.lock:
            out = {"nc": answer()}
            if self.injector is None:
                out["injected"] = {"answer": "(no document injected yet)", "top": {}}
            else:
                with swapped_parameters(self.model, self.injector.current):
                    out["injected"] = answer()
            (chosen,) = prompt_contexts(self.tokenizer, asked, self.documents, max_length(self.model, self.tokenizer),
                                        self.max_new_tokens)
            if not self.documents:
                out["prompt"] = {"answer": "(no document injected yet)", "top": {}}
            elif chosen is None:
                out["prompt"] = {"answer": "(the documents do not fit in the model's window)", "top": {}}
            else:
                out["prompt"] = answer([chosen[0]])
        return out


def build_app(playground: Playground, title: str):
    """The gradio Blocks page of `playground` (element ids: document, inject, reset, status, question, ask,
    answer-nc / answer-injected / answer-prompt, top-nc / top-injected / top-prompt)."""
    gr = _gradio()
    with gr.Blocks(title="promptstep playground", analytics_enabled=False) as app:
        gr.Markdown(f"## promptstep playground\n{title}")
        document = gr.Textbox(label="Document", lines=6, placeholder="Paste a document here, then Inject.",
                              elem_id="document")
        with gr.Row():
            inject = gr.Button("Inject", variant="primary", elem_id="inject")
            reset = gr.Button("Forget all documents", elem_id="reset")
        status = gr.Markdown("No documents injected yet.", elem_id="status")
        question = gr.Textbox(label="Question (the text the answer follows)", lines=1, elem_id="question")
        ask = gr.Button("Ask", variant="primary", elem_id="ask")
        outputs = []
        with gr.Row():
            for key, label in COLUMNS:
                with gr.Column():
                    outputs.append(gr.Textbox(label=f"{label}: answer", elem_id=f"answer-{key}", interactive=False))
                    outputs.append(gr.Label(label=f"{label}: next-token probabilities",
                                            num_top_classes=playground.top_k, elem_id=f"top-{key}"))

        def on_ask(text: str):
            answers = playground.ask(text)
            return [value for key, _ in COLUMNS for value in (answers[key]["answer"], answers[key]["top"] or None)]

        inject.click(playground.inject, inputs=document, outputs=status)
        reset.click(playground.reset, inputs=None, outputs=status)
        ask.click(on_ask, inputs=question, outputs=outputs)
        question.submit(on_ask, inputs=question, outputs=outputs)
    return app


def launch(app, port: int, block: bool = True):
    """Serve `app` on 127.0.0.1:`port` only (no share link, no server-side rendering, no monitoring or MCP
    endpoints); with block=False return at once (the caller closes it with `app.close()`)."""
    return app.launch(server_name=HOST, server_port=port, share=False, inbrowser=False, quiet=True,
                      prevent_thread_lock=not block, ssr_mode=False, enable_monitoring=False, mcp_server=False,
                      pwa=False, show_error=True)


def playground_for(config: PlaygroundConfig, model_and_tokenizer=None) -> tuple[Playground, str]:
    """The Playground of a config (the model loaded, the inner step resolved) and the page's subtitle."""
    from promptstep.commands.common import load_from_config

    options, source = config.inject_options(config.model)
    model, tokenizer = model_and_tokenizer or load_from_config(config)
    inner = options.inner
    given = f"; {', '.join(source['overridden'])} set on the command line" if source["overridden"] else ""
    title = (f"Model `{config.model}`; inner step lr={inner.lr:g}, {inner.steps} step(s), parameters "
             f"{inner.params or 'all'}, rule {inner.rule} (from {source['source']}{given}); mode {options.mode}.")
    return Playground(model, tokenizer, options, top_k=config.top_k, max_new_tokens=config.max_new_tokens), title


def run_playground(config: PlaygroundConfig, model_and_tokenizer=None) -> None:
    """Load the model and serve the page until interrupted (Ctrl-C)."""
    import socket

    _gradio()  # a missing extra is one line, before the model loads
    with socket.socket() as probe:
        try:
            probe.bind((HOST, config.port))
        except OSError:
            raise InputError(f"port {config.port} on {HOST} is in use; choose another with --port") from None
    playground, title = playground_for(config, model_and_tokenizer)
    app = build_app(playground, title)
    print(f"promptstep playground on http://{HOST}:{config.port} (Ctrl-C to stop)", flush=True)
    launch(app, config.port, block=True)
