"""Time per optimizer step: Muon and Spectra (caplab.train.spectral) against fused AdamW.

Same model (the `demo` recipe's GPT by default, or --d-model/--layers), same
gradients (one backward pass, kept), each optimizer stepping `--steps` times
after a warm-up, in this process. Reports milliseconds per `optimizer.step()`
and the ratio to AdamW, plus the optimizer-state size of each.

With `--recipe NAME`, times whole training steps instead (sampling, forward,
backward, clipping, the optimizer) through caplab's Trainer on that recipe's
task and model, each optimizer in turn, `--steps` steps after 5 of warm-up,
and reports milliseconds per step and the ratio to AdamW. Steps to a loss
times this per-step cost is the wall-clock to that loss on an idle machine,
which a sweep run on a shared machine cannot measure cleanly.

    python benchmarks/optimizer_step.py [--d-model 128] [--layers 2] [--steps 50]
    python benchmarks/optimizer_step.py --recipe optimizers-sweep --steps 40 [--repeats 3]
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


def whole_steps(recipe: str, steps: int, repeats: int) -> None:
    from caplab import load_config
    from caplab.experiment import build

    times = {name: [] for name in ("adamw", "muon", "spectra")}
    for _ in range(repeats):  # interleaved, so a slow spell of a shared machine hits every optimizer
        for name in times:
            cfg = load_config(recipe, [f"train.optimizer={name}", "diagnostics.spectral_every=0", "train.progress=never"])
            _, _, trainer = build(cfg)
            for _ in range(5):
                trainer.train_step()
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    shape = cfg.model
    print(f"recipe {recipe}: GPT {shape.n_layers} layers, d_model {shape.d_model}, batch {cfg.train.batch_size}, "
          f"{torch.get_num_threads()} threads; whole training steps, best of {repeats} x {steps}")
    base = min(times["adamw"])
    for name, ms in times.items():
        print(f"{name:<8} {min(ms):8.1f} ms/step (runs {', '.join(f'{m:.1f}' for m in ms)})   x{min(ms) / base:5.2f} AdamW")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--recipe", help="time whole training steps of this recipe instead")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.recipe:
        return whole_steps(args.recipe, args.steps, args.repeats)
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
