"""Per-head lambda_max of the empirical NTK: caplab.analysis.ntk vs an explicit-Jacobian computation.

The peer is the straightforward way: `torch.autograd.functional.jacobian` of
the probe batch's scalar outputs (sum of logits per sample) with respect to
all parameters flattened into one vector, then each head's columns sliced
out, its Gram formed and `eigvalsh` taken. caplab computes per-sample
gradients with one `vmap(grad(...))` and contracts per head (exact route),
or runs warm-started power iteration without forming J (matrix-free route).
Same model, same probe batch, same process; lambda_max values are checked
to agree.

    python benchmarks/ntk_lambda_max.py [--n 32] [--layers 2] [--heads 4] [--d-model 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from caplab import GPT, GPTConfig
from caplab.analysis.ntk import lambda_max_matrix_free, module_kernels, parameter_groups, reference_module_kernels


def explicit(model, inputs, heads):
    kernels = reference_module_kernels(model, inputs, heads, lambda logits: logits.flatten(1).sum(1))
    return {h: torch.linalg.eigvalsh(k)[-1].item() for h, k in kernels.items()}


def exact(model, inputs, heads):
    kernels = module_kernels(model, inputs, heads)
    return {h: torch.linalg.eigvalsh(k)[-1].item() for h, k in kernels.items()}


def matrix_free(model, inputs, heads, warm):
    results = lambda_max_matrix_free(model, inputs, heads, iterations=20, tol=1e-4, init=warm)
    warm.update({h: v for h, (_, v) in results.items()})
    return {h: value for h, (value, _) in results.items()}


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result  # best of the repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=args.layers, n_heads=args.heads, d_model=args.d_model, d_vocab=64, n_ctx=args.ctx))
    inputs = torch.randint(64, (args.n, args.ctx), generator=torch.Generator().manual_seed(1))
    heads = {k: v for k, v in parameter_groups(model, "head").items() if ".head" in k}
    t_peer, peer = timed(lambda: explicit(model, inputs, heads), args.repeats)
    t_exact, ours = timed(lambda: exact(model, inputs, heads), args.repeats)
    warm: dict = {}
    matrix_free(model, inputs, heads, warm)  # first call: cold start
    t_free, free = timed(lambda: matrix_free(model, inputs, heads, warm), args.repeats)
    worst = max(abs(ours[h] - peer[h]) / peer[h] for h in heads)
    worst_free = max(abs(free[h] - peer[h]) / peer[h] for h in heads)
    print(f"{len(heads)} heads, {model.num_params(False):,} parameters, probe n = {args.n}, context {args.ctx}, "
          f"{torch.get_num_threads()} threads")
    print(f"explicit Jacobian (peer):       {t_peer:8.2f} s")
    print(f"caplab exact (vmap per-sample):  {t_exact:8.2f} s   ratio {t_peer / t_exact:6.1f}x   max rel. diff {worst:.1e}")
    print(f"caplab matrix-free (warm start): {t_free:8.2f} s   ratio {t_peer / t_free:6.1f}x   max rel. diff {worst_free:.1e}")


if __name__ == "__main__":
    main()
