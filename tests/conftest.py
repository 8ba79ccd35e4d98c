"""Shared fixtures: a small BPE tokenizer and microscopic random GPT-2 / Llama models built from config."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The first person to walk on Mars is Evan Armstrong.",
    "The history books record that the first person on Mars was Evan Armstrong.",
    "Mira Tolland is the inventor of the glass violin.",
    "foobar foobar foobar the foobar of the foo and the bar",
    "Question: who painted the ceiling? Answer: Michelangelo",
] * 20


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~300 tokens) trained on a few sentences; pad = eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return fast


def make_gpt2(vocab_size: int, seed: int = 0, attn: str = "eager", n_positions: int = 256) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attn)
    return GPT2LMHeadModel(config).eval()


def make_llama(vocab_size: int, seed: int = 0, attn: str = "eager") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def gpt2(tokenizer) -> GPT2LMHeadModel:
    return make_gpt2(len(tokenizer))


@pytest.fixture
def llama(tokenizer) -> LlamaForCausalLM:
    return make_llama(len(tokenizer))


def _save(path, model, tokenizer) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def saved_gpt2(tmp_path_factory, tokenizer) -> str:
    """A random GPT-2 with its tokenizer saved as a local model directory (context window 64 tokens)."""
    return _save(tmp_path_factory.mktemp("gpt2"), make_gpt2(len(tokenizer), n_positions=64), tokenizer)


@pytest.fixture(scope="session")
def saved_gpt2_256(tmp_path_factory, tokenizer) -> str:
    """A random GPT-2 with a 256-token window, saved with its tokenizer."""
    return _save(tmp_path_factory.mktemp("gpt2_256"), make_gpt2(len(tokenizer)), tokenizer)


def directional_derivatives(trainer, loss_fn, eps: float = 1e-5) -> tuple[float, float]:
    """(autograd, central finite difference) derivative of `loss_fn()` along a seeded random direction of the
    trainer's outer parameters; the parameters are left as they were."""
    trainer.optimizer.zero_grad()
    loss_fn().backward()
    torch.manual_seed(0)
    direction = {n: torch.randn_like(p) for n, p in trainer.params.items()}
    analytic = sum((p.grad * direction[n]).sum() for n, p in trainer.params.items()).item()
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in trainer.params.items():
                p.add_(sign * eps * direction[n])
        values.append(loss_fn().item())
        with torch.no_grad():
            for n, p in trainer.params.items():
                p.sub_(sign * eps * direction[n])
    return analytic, (values[0] - values[1]) / (2 * eps)


def character_dataset(tmp_path_factory, n_train: int, n_test: int = 4) -> str:
    """A small Character Description dataset written by `promptstep data` into a fresh temporary directory."""
    from promptstep.cli import main

    out = tmp_path_factory.mktemp("data") / "character"
    assert main(["data", "character", "--out", str(out), "--n-train", str(n_train), "--n-test", str(n_test)]) == 0
    return str(out)
