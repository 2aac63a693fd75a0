"""Training throughput: caplab's GPT vs HuggingFace GPT2LMHeadModel of identical shape.

Both models are built in this process from the same config (no download),
trained with the same fused AdamW on the same batches, alternating in rounds
so that machine noise hits both alike. Three pairings are timed:

    fp32 / fp32    identical math (HF's default precision)
    bf16 / bf16    both under bf16 autocast
    bf16 / fp32    caplab with `train.precision=bf16` against HF's default

Prints tokens/s of each, the ratios caplab / HF, caplab's achieved
GFLOP/s (6 N + 12 L T d FLOPs per token) and, on a GPU, the model FLOPs
utilisation (MFU: achieved / the device's dense bf16 peak, `--peak-tflops`,
looked up for known GPUs).

    python benchmarks/train_throughput.py              # the tiny default shape
    python benchmarks/train_throughput.py --d-model 256 --n-layers 4 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from caplab import GPT, GPTConfig
from caplab.train.optim import make_adamw


def hf_model(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
        n_inner=cfg.d_mlp, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, use_cache=False,
    )
    return GPT2LMHeadModel(config)


def step_fn(model, optimizer, hf: bool, bf16: bool, device):
    def step(tokens, targets):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens).logits if hf else model(tokens)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    return step


def time_steps(step, batches, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for tokens, targets in batches:
        step(tokens, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# dense bf16 tensor-core peaks (vendor data sheets), for MFU
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "4090": 165.0}


def peak_tflops(device: torch.device, given) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-vocab", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak for MFU (default: known GPUs)")
    args = parser.parse_args()

    device = torch.device(args.device)
    # identical shape: HF GPT-2 always has biases, so caplab's are switched on here
    cfg = GPTConfig(n_layers=args.n_layers, n_heads=args.n_heads, d_model=args.d_model, n_ctx=args.n_ctx,
                    d_vocab=args.d_vocab, bias=True)
    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
    theirs = hf_model(cfg).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    steps = {}
    for precision in ("fp32", "bf16"):
        bf16 = precision == "bf16"
        steps[f"caplab {precision}"] = step_fn(ours, make_adamw(ours, 1e-3, 0.1, (0.9, 0.95), device), False, bf16, device)
        steps[f"HF {precision}"] = step_fn(theirs, make_adamw(theirs, 1e-3, 0.1, (0.9, 0.95), device), True, bf16, device)
    generator = torch.Generator().manual_seed(0)
    batches = [
        tuple(t.to(device) for t in torch.randint(cfg.d_vocab, (2, args.batch_size, cfg.n_ctx), generator=generator))
        for _ in range(args.steps)
    ]
    for step in steps.values():  # warm-up
        time_steps(step, batches[:3], device)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, batches, device))

    tokens = args.steps * args.batch_size * cfg.n_ctx
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    n_nonembed = ours.num_params()
    flops_per_token = 6 * (n_nonembed + cfg.d_model * cfg.d_vocab) + 12 * cfg.n_layers * cfg.n_ctx * cfg.d_model
    print(f"shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.d_vocab}, context {cfg.n_ctx}, "
          f"batch {args.batch_size}; params caplab {n_ours:,} / HF {n_theirs:,}; device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    peak = peak_tflops(device, args.peak_tflops)
    for name, value in rate.items():
        mfu = f", MFU {value * flops_per_token / (peak * 1e12):.1%}" if peak else ""
        print(f"{name:<12} {value:>12,.0f} tokens/s   ({value * flops_per_token / 1e9:.1f} GFLOP/s{mfu})")
    for ours_p, theirs_p in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "fp32")):
        print(f"ratio caplab {ours_p} / HF {theirs_p}: {rate[f'caplab {ours_p}'] / rate[f'HF {theirs_p}']:.2f}x")

if __name__ == "__main__":
    main()
