"""The project's own tiny GPT-2 (`tiny`): its tokenizer, its pretraining text, and its pretraining loop.

The pretraining text teaches in-context copying in exactly the evaluation format: a context of facts,
a space, a paraphrased query, then " NAME" and a newline. Every episode draws fresh train-split names, so
the model learns to copy names it has never seen rather than to memorise a pool (test names never occur).
Answer tokens carry a larger weight in the loss: without it, copying did not emerge within 1500 steps here;
with it, it emerges within about 600.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from promptstep.data.names import name_syllables, sample_name
from promptstep.data.synthetic import FAMILIES, ORDERS, render_fact, render_query
from promptstep.errors import InputError

EOS = "<|endoftext|>"
EPISODE_MIX = {"qa": 0.6, "fact": 0.2, "query": 0.2}
MAX_FACTS = 3


@dataclass(frozen=True)
class TinyPretrainConfig:
    """Everything that determines a tiny-model pretraining run (saved as pretrain_config.yaml)."""

    steps: int
    seed: int
    warmup_steps: int
    batch_size: int = 32
    lr: float = 3e-3
    answer_weight: float = 5.0
    weight_decay: float = 0.01
    max_len: int = 128
    vocab_size: int = 1536
    tokenizer_episodes: int = 20000
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256


@dataclass(frozen=True)
class Episode:
    """A piece of pretraining text and the character spans of its copyable answers (" NAME" + newline)."""

    text: str
    answer_spans: tuple[tuple[int, int], ...] = ()


def default_tiny_dir() -> Path:
    """Where the pretrained tiny model ships inside the package."""
    return Path(__file__).parent / "assets" / "tiny"


def _random_fact(rng: random.Random) -> tuple:
    family = rng.choice(FAMILIES)
    return family, rng.choice(family.fillers)


def _query_for(rng: random.Random, family, filler: str) -> str:
    return render_query(family, filler, rng.randrange(len(family.paraphrases)))


def qa_episode(rng: random.Random) -> Episode:
    """One to three facts, then paraphrased queries about each of them in a random order, one per line.

    The first query follows the facts after a space (the Prompt layout); every answer is " NAME" and a
    newline, and each later query starts its own line.
    """
    count = rng.randint(1, MAX_FACTS)
    facts: list[tuple] = []
    while len(facts) < count:
        fact = _random_fact(rng)
        if fact not in facts:
            facts.append(fact)
    names = [sample_name(rng, "train") for _ in facts]
    text = " ".join(render_fact(f, x, n, rng.choice(ORDERS)) for (f, x), n in zip(facts, names)) + " "
    spans = []
    for index in rng.sample(range(count), count):
        text += _query_for(rng, *facts[index])
        answer = f" {names[index]}\n"
        spans.append((len(text), len(text) + len(answer)))
        text += answer
    return Episode(text, tuple(spans))


def fact_episode(rng: random.Random) -> Episode:
    """A single fact sentence about a fresh name, in either order."""
    family, filler = _random_fact(rng)
    return Episode(render_fact(family, filler, sample_name(rng, "train"), rng.choice(ORDERS)) + "\n")


def query_episode(rng: random.Random) -> Episode:
    """A query with no context, followed by a random (unpredictable, so not an answer) name."""
    family, filler = _random_fact(rng)
    return Episode(f"{_query_for(rng, family, filler)} {sample_name(rng, 'train')}\n")


EPISODE_MAKERS = {"qa": qa_episode, "fact": fact_episode, "query": query_episode}


def pretraining_episode(rng: random.Random) -> Episode:
    """One episode of pretraining text, ending in a newline; its kind is drawn from EPISODE_MIX."""
    kind = rng.choices(list(EPISODE_MIX), weights=list(EPISODE_MIX.values()))[0]
    return EPISODE_MAKERS[kind](rng)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with `EOS` as its eos, bos and pad token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS,
    )


def tokenizer_corpus(rng: random.Random, n_episodes: int) -> list[str]:
    """Text to train the tokenizer on: pretraining episodes plus each name syllable on its own line."""
    syllables = [f"{s} {s}\n" for s in name_syllables()]
    return [pretraining_episode(rng).text for _ in range(n_episodes)] + syllables


def model_config(config: TinyPretrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2Config:
    """The GPT-2 architecture of the tiny model, sized to `tokenizer`, without dropout."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def episode_batch(
    rng: random.Random, tokenizer: PreTrainedTokenizerFast, batch_size: int, max_len: int
) -> dict[str, torch.Tensor]:
    """One fresh episode per row, each starting at position 0 (as evaluation prompts do), right-padded.

    Rows are cut at `max_len` tokens. `labels` is -100 on padding; `answer_mask` marks answer tokens.
    """
    episodes = [pretraining_episode(rng) for _ in range(batch_size)]
    encoded = tokenizer([e.text for e in episodes], return_offsets_mapping=True)
    width = min(max_len, max(len(ids) for ids in encoded.input_ids))
    input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    answer_mask = torch.zeros((batch_size, width), dtype=torch.bool)
    for row, (episode, ids, offsets) in enumerate(zip(episodes, encoded.input_ids, encoded.offset_mapping)):
        ids, offsets = ids[:width], offsets[:width]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        answer_mask[row, : len(ids)] = torch.tensor(
            [any(lo <= start < hi for lo, hi in episode.answer_spans) for start, _ in offsets]
        )
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "answer_mask": answer_mask}


def weighted_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, answer_mask: torch.Tensor, answer_weight: float
) -> dict[str, torch.Tensor]:
    """Next-token losses: `objective` (mean with answer tokens weighted by `answer_weight`), `loss` (plain
    mean over real tokens) and `answer_loss` (mean over answer tokens)."""
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
    ).view_as(labels[:, 1:])
    real = (labels[:, 1:] != -100).float()
    answer = answer_mask[:, 1:].float() * real
    weights = real + (answer_weight - 1.0) * answer
    return {
        "objective": (nll * weights).sum() / weights.sum(),
        "loss": (nll * real).sum() / real.sum(),
        "answer_loss": (nll * answer).sum() / answer.sum().clamp(min=1.0),
    }


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def idle_cores() -> int:
    """CPU cores not already busy (core count minus the 1-minute load average), at least 1.

    Threads beyond the idle cores make small models much slower (threads wait on each other), not faster.
    """
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, cores - busy)


def _check_config(config: TinyPretrainConfig) -> None:
    for name in ("steps", "warmup_steps", "batch_size", "max_len", "vocab_size", "tokenizer_episodes"):
        if getattr(config, name) <= 0:
            raise InputError(f"tiny pretraining: {name} must be positive, got {getattr(config, name)}")
    if config.max_len > config.n_positions:
        raise InputError(f"tiny pretraining: max_len {config.max_len} exceeds n_positions {config.n_positions}")
    if config.lr <= 0:
        raise InputError(f"tiny pretraining: lr must be positive, got {config.lr}")
    if config.answer_weight < 1:
        raise InputError(f"tiny pretraining: answer_weight must be at least 1, got {config.answer_weight}")


def _train(model, tokenizer, config: TinyPretrainConfig, log_path: Path, progress: bool) -> float:
    """Run the optimisation loop, appending one JSON line per step to `log_path`; return the last loss."""
    rng = random.Random(f"promptstep-tiny-data:{config.seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, config.warmup_steps, config.steps)
    )
    model.train()
    loss_value = float("nan")
    with log_path.open("w", encoding="utf-8") as log, tqdm(
        range(config.steps), desc="pretrain tiny", disable=not progress
    ) as bar:
        for step in bar:
            batch = episode_batch(rng, tokenizer, config.batch_size, config.max_len)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses = weighted_lm_loss(logits, batch["labels"], batch["answer_mask"], config.answer_weight)
            optimizer.zero_grad(set_to_none=True)
            losses["objective"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            entry = {"step": step + 1, **{k: v.item() for k, v in losses.items()}, "lr": schedule.get_last_lr()[0]}
            log.write(json.dumps(entry) + "\n")
            bar.set_postfix(loss=f"{entry['loss']:.3f}", answer=f"{entry['answer_loss']:.3f}")
            loss_value = entry["loss"]
    model.eval()
    return loss_value


def pretrain_tiny(
    out_dir: str | os.PathLike,
    steps: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    *,
    answer_weight: float = 5.0,
    max_len: int = 128,
    vocab_size: int = 1536,
    tokenizer_episodes: int = 20000,
    warmup_steps: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train the tokenizer and pretrain the tiny GPT-2 from scratch; save both into `out_dir` and return it.

    Writes model.safetensors, config.json, the tokenizer files, pretrain_config.yaml and pretrain_log.jsonl
    (one line per step). The learning rate warms up linearly over `warmup_steps` (default: a tenth of the
    run, at most 100) and then follows a cosine to zero. Uses `num_threads` CPU threads (default: the idle
    cores) and restores the setting after.
    """
    if warmup_steps is None:
        warmup_steps = min(100, max(1, steps // 10))
    config = TinyPretrainConfig(
        steps=steps, seed=seed, warmup_steps=warmup_steps, batch_size=batch_size, lr=lr,
        answer_weight=answer_weight, max_len=max_len, vocab_size=vocab_size, tokenizer_episodes=tokenizer_episodes,
    )
    _check_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or idle_cores())
    try:
        started = time.perf_counter()
        torch.manual_seed(seed)
        corpus = tokenizer_corpus(random.Random(f"promptstep-tiny-tokenizer:{seed}"), tokenizer_episodes)
        tokenizer = train_tokenizer(corpus, vocab_size)
        tokenizer.model_max_length = config.n_positions
        model = GPT2LMHeadModel(model_config(config, tokenizer))
        record = {**asdict(config), "n_params": sum(p.numel() for p in model.parameters()),
                  "vocab": len(tokenizer), "episode_mix": EPISODE_MIX, "max_facts": MAX_FACTS}
        (out / "pretrain_config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
        final_loss = _train(model, tokenizer, config, out / "pretrain_log.jsonl", progress)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record.update(final_loss=final_loss, wall_seconds=round(time.perf_counter() - started, 1))
        (out / "pretrain_config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    finally:
        torch.set_num_threads(previous_threads)
    return out
