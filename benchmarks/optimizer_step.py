"""Time per optimizer step: Muon and Spectra (caplab.train.spectral) against fused AdamW.

Same model (the `demo` recipe's GPT by default, or --d-model/--layers), same
gradients (one backward pass, kept), each optimizer stepping `--steps` times
after a warm-up, in this process. Reports milliseconds per `optimizer.step()`
and the ratio to AdamW, plus the optimizer-state size of each.

    python benchmarks/optimizer_step.py [--d-model 128] [--layers 2] [--steps 50]
"""

from __future__ import annotations

import argparse
import time

import torch

from caplab import GPT, GPTConfig
from caplab.train.optim import make_adamw
from caplab.train.spectral import make_spectral


def state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    for name in ("adamw", "muon", "spectra"):
        model = GPT(GPTConfig(n_layers=args.layers, n_heads=4, d_model=args.d_model, d_vocab=64, n_ctx=64))
        tokens = torch.randint(64, (16, 64), generator=torch.Generator().manual_seed(1))
        model(tokens).logsumexp(-1).mean().backward()  # fixed gradients
        if name == "adamw":
            optimizer = make_adamw(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
        else:
            optimizer = make_spectral(model, name, 1e-3, 0.1, 0.95, (0.9, 0.95))
        for _ in range(3):
            optimizer.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        results[name] = ((time.perf_counter() - start) / args.steps * 1000, state_bytes(optimizer))
    params = sum(p.numel() for p in model.parameters())
    print(f"GPT {args.layers} layers, d_model {args.d_model}: {params:,} parameters, {torch.get_num_threads()} threads")
    base_ms, base_bytes = results["adamw"]
    for name, (ms, size) in results.items():
        print(f"{name:<8} {ms:8.2f} ms/step   x{ms / base_ms:5.2f} AdamW   state {size / 1e6:6.2f} MB (x{size / base_bytes:.2f})")


if __name__ == "__main__":
    main()
