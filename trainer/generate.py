"""Sample from a checkpoint: a reply to one prompt, or a multi-turn chat.

    python -m trainer.generate --checkpoint runs/quickstart --prompt "hi, how are you?"
    python -m trainer.generate --checkpoint runs/quickstart --chat
    python -m trainer.generate --checkpoint runs/big --prompt "hi" --qbackend grpc://10.0.0.5:50051

The circuits of a hybrid model run on --qbackend (`local` by default, whatever the run trained on).

The text format is the training data's (trainer/data/corpus.py): a dialogue starts after <|eod|>, each
turn ends with <|eot|>. A prompt is one user turn; the reply is sampled until <|eot|>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from trainer.data.tokenizer import Tokenizer
from trainer.model.circuits import Circuits
from trainer.model.convert import build_model
from trainer.model.transformer import Transformer
from trainer.run.checkpoint import CheckpointError, load_for_inference


class Chat:
    """A dialogue with the model; the history is kept and cut from the left to fit the context."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, settings: argparse.Namespace):
        self.model, self.tok, self.settings = model, tokenizer, settings
        self.history: list[int] = [tokenizer.eod_id]
        self.generator = torch.Generator().manual_seed(settings.seed)

    def reply(self, text: str) -> str:
        self.history += self.tok.encode(text.strip()) + [self.tok.eot_id]
        budget = self.model.cfg.context - self.settings.max_tokens
        prompt = self.history[-budget:]
        out = sample(self.model, prompt, self.settings, self.generator, stop={self.tok.eot_id, self.tok.eod_id})
        self.history += out + [self.tok.eot_id]
        return self.tok.decode(out).strip()


@torch.no_grad()
def sample(
    model: Transformer, prompt: list[int], s: argparse.Namespace, gen: torch.Generator, stop: set[int]
) -> list[int]:
    """Continue `prompt` token by token with the KV cache until a stop token or max_tokens."""
    model.eval()
    cache = model.new_cache(1)
    logits, _ = model(torch.tensor([prompt]), cache=cache)  # prefill: (1, T, V)
    out: list[int] = []
    while len(out) < s.max_tokens and cache.pos < model.cfg.context:
        nxt = pick(logits[0, -1], s.temperature, s.top_k, s.top_p, gen)
        if nxt in stop:
            break
        out.append(nxt)
        logits, _ = model(torch.tensor([[nxt]]), cache=cache)  # (1, 1, V)
    return out


def pick(logits: Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    """One token id from logits (V,): greedy at temperature 0, else top-k then nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        outside = sorted_p.cumsum(0) - sorted_p > top_p  # tokens after the nucleus is full
        probs = probs.scatter(0, order[outside], 0.0)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def load(checkpoint: Path, circuits: Circuits | None = None) -> tuple[Transformer, Tokenizer]:
    cfg, state, tokenizer_json, _step = load_for_inference(checkpoint)
    model = build_model(cfg, circuits)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: weights do not match its config: {str(e).splitlines()[0]}") from None
    return model, tokenizer_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="trainer.generate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a run directory of trainer.main")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one user turn; prints the model's reply")
    what.add_argument("--chat", action="store_true", help="interactive dialogue on stdin (empty line or EOF ends)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qbackend", default="local", help="where a hybrid model's circuits run (as trainer.main's)")
    p.add_argument("--q-replicas", type=int, default=1, help="replicas of the local Ray pool of --qbackend ray")
    args = p.parse_args(argv)
    if args.max_tokens < 1 or args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        p.error("need --max-tokens >= 1, --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    circuits = Circuits(backend=args.qbackend, replicas=args.q_replicas)
    try:
        problems = circuits.problems()
        if problems:
            raise ValueError("; ".join(problems))
        model, tokenizer = load(args.checkpoint, circuits)
    except (CheckpointError, ValueError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_tokens >= model.cfg.context:
        print(f"error: --max-tokens must be below the model's context ({model.cfg.context})", file=sys.stderr)
        return 2
    chat = Chat(model, tokenizer, args)
    if args.prompt is not None:
        print(chat.reply(args.prompt))
        return 0
    print("chat with the model; an empty line ends it", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            break
        print(f"model: {chat.reply(line)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
