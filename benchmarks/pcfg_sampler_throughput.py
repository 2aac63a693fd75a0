"""PCFG counting documents: caplab's batched sampler vs a sequential NLTK sampler.

The peer is the straightforward way to make these documents (a paper
script's way): the grammar as an `nltk.PCFG`, each string expanded
recursively with `random.choices`, a random window cut in Python, strings
shorter than the window redrawn, the operand drawn from the prior and the
answer counted in Python. Both make `count` documents of the `finetune-pcfg`
recipe's pretraining task (window 64, counting window 16, operand prior
low2), in this process, on one CPU thread by default, timed alternately.
Throughput counts document tokens.

    python benchmarks/pcfg_sampler_throughput.py [--batch 4096] [--repeats 5] [--threads 1] [--window 64]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from nltk_peer import expand

from caplab.tasks import make_task
from caplab.tasks.pcfg_counting import OPERAND_PRIORS
from caplab.tasks.pcfg_grammar import RULES


class NltkSampler:
    """Sequential reference: recursive expansion of an nltk.PCFG, then a window and the count in Python."""

    def __init__(self, window: int, count_window: int, prior: str) -> None:
        import nltk

        lines = [f"{lhs.upper()} -> " + " | ".join(" ".join(p.upper() for p in rule.split()) + " [0.5]" for rule in rules)
                 for lhs, rules in RULES.items()]
        lines += [f"{x.upper()} -> '{x}' [1.0]" for x in "abc"]
        self.nltk, self.grammar = nltk, nltk.PCFG.fromstring("\n".join(lines))
        self.window, self.count_window, self.prior = window, count_window, OPERAND_PRIORS[prior]
        self.rng = random.Random(0)

    def expand(self, symbol) -> list[str]:
        return expand(self.grammar, symbol, self.rng)

    def document(self) -> list[str]:
        while True:
            string = self.expand(self.grammar.start())
            if len(string) >= self.window:
                break
        start = self.rng.randrange(len(string) - self.window + 1)
        text = string[start : start + self.window]
        operand = self.rng.choices("abc", weights=self.prior)[0]
        answer = text[-self.count_window :].count(operand)
        return ["$", "count", operand, str(self.count_window), "<", *text, ">", "=", str(answer), "#"]

    def batch(self, n: int) -> int:
        return sum(len(self.document()) for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task("pcfg_counting", tasks=["count"], operand_prior="low2", window=args.window, count_window=16)
    peer = NltkSampler(args.window, 16, "low2")
    generator, device = torch.Generator().manual_seed(0), torch.device("cpu")
    task.sample(256, generator, device)  # warm-up
    ours, theirs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        task.sample(args.batch, generator, device)
        ours.append((args.batch * task.doc_len, time.perf_counter() - start))
        start = time.perf_counter()
        tokens = peer.batch(args.batch)
        theirs.append((tokens, time.perf_counter() - start))
    rate = lambda runs: sorted(t / s for t, s in runs)[len(runs) // 2]  # noqa: E731 (median tokens/s)
    print(f"batch {args.batch}, window {args.window}, {args.threads} thread(s), median of {args.repeats}")
    print(f"caplab sampler:       {rate(ours):>12,.0f} tokens/s")
    print(f"sequential NLTK peer: {rate(theirs):>12,.0f} tokens/s")
    print(f"ratio caplab / peer:  {rate(ours) / rate(theirs):.1f}x")


if __name__ == "__main__":
    main()
