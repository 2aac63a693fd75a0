"""Per-module empirical neural tangent kernels (the primitive of modular adaptive training).

For a model f, a probe batch x_1..x_n and a scalarised output s(x), module l
(a set of parameters, or slices of them) has the n x n kernel

    K_l = J_l J_l^T,    J_l[i] = d s(x_i) / d theta_l,

and the whole-model kernel is the sum of the module kernels when the modules
partition the parameters. Scalarisations (`output`):

    "sum"         s(x) = sum of all logits (the pseudo-NTK of Mohamadi et al., 2023)
    "projection"  s(x) = <r, f(x)> for a fixed random unit vector r (seeded)
    "loss"        s(x) = the per-sample loss (mean cross-entropy over the loss mask)

Two routes:

- `module_kernels`: exact Grams from per-sample gradients, `vmap(grad(s))`
  over the probe batch with `torch.func`, then one contraction per parameter
  slice. Cost: n backward passes (batched) and O(n^2 p).
- `lambda_max_matrix_free`: power iteration on v -> J_l (J_l^T v), each
  product a vector-Jacobian product and its transpose over the whole probe
  batch, with only module l's coordinates kept; warm-startable. For large n.

Modules (`groups`): "head" (each attention head owns its rows of W_Q, W_K,
W_V in `attn.qkv` and its columns of W_O in `attn.out`; every other parameter
is grouped by its submodule), "submodule" (one group per parameter-owning
submodule), "layer" (embeddings, each block, the final norm and
unembedding), or a dict from module name to parameter names.

While kernels are computed, every attention layer runs its explicit-math
path (softmax of q k^T), which `torch.func` transforms support; the fused
kernel has no batching rule for vmap nor forward-mode derivative.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

# a parameter slice: (parameter name, axis, start, stop); axis None = the whole parameter
Slice = tuple[str, Optional[int], int, int]


# ---------------------------------------------------------------- modules


def parameter_groups(model: nn.Module, by: Union[str, dict] = "head") -> dict[str, list[Slice]]:
    """Module name -> the parameter slices it owns (see module docstring); every parameter is covered once."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(by, dict):
        unknown = [n for ns in by.values() for n in ns if n not in names]
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} in groups")
        return {group: [(n, None, 0, 0) for n in ns] for group, ns in by.items()}
    if by not in ("head", "submodule", "layer"):
        raise ValueError(f"groups must be 'head', 'submodule', 'layer' or a dict, got {by!r}")
    groups: dict[str, list[Slice]] = {}
    for name in names:
        owner = name.rsplit(".", 1)[0]
        if by == "layer":
            key = ".".join(owner.split(".")[:2]) if owner.startswith("blocks.") else \
                "embed" if owner in ("embed", "pos_embed") else "final"
            groups.setdefault(key, []).append((name, None, 0, 0))
        elif by == "head" and owner.endswith(".attn.qkv"):
            cfg = model.cfg
            for h in range(cfg.n_heads):
                for part in range(3):  # q, k, v rows of this head
                    start = part * cfg.d_model + h * cfg.d_head
                    groups.setdefault(f"{owner[:-4]}.head{h}", []).append((name, 0, start, start + cfg.d_head))
        elif by == "head" and name.endswith(".attn.out.weight"):
            cfg = model.cfg
            for h in range(cfg.n_heads):
                groups.setdefault(f"{owner[:-4]}.head{h}", []).append((name, 1, h * cfg.d_head, (h + 1) * cfg.d_head))
        else:
            groups.setdefault(owner, []).append((name, None, 0, 0))
    return groups


def _take(tensor: torch.Tensor, piece: Slice, batch_dims: int = 0) -> torch.Tensor:
    _, axis, start, stop = piece
    return tensor if axis is None else tensor.narrow(batch_dims + axis, start, stop - start)


@contextlib.contextmanager
def _explicit_attention(model: nn.Module):
    """Identity hooks on every attention pattern make attention layers take their explicit-math path."""
    points = [n for n in getattr(model, "hook_points", {}) if n.endswith("attn.hook_pattern")]
    if not points:
        yield
        return
    with model.hooks([(n, lambda x, hook: None) for n in points]):
        yield


# ---------------------------------------------------------------- scalarisation


def _scalar_fn(model: nn.Module, output: str, targets, loss_mask, seed: int, example: torch.Tensor):
    """s(params, x, target, mask) -> per-sample scalars (batch,) for a batch x."""
    projection = None
    if output == "projection":
        with torch.no_grad(), _explicit_attention(model):
            shape = model(example[:1]).shape[1:]
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(shape, generator=generator).to(example.device)
        projection /= projection.norm()
    elif output not in ("sum", "loss"):
        raise ValueError(f"output must be 'sum', 'projection' or 'loss', got {output!r}")
    if output == "loss" and targets is None:
        raise ValueError("output='loss' needs targets")

    def scalars(params, x, target, mask):
        logits = functional_call(model, params, (x,))
        if output == "sum":
            return logits.flatten(1).sum(1)
        if output == "projection":
            return (logits * projection.to(logits.dtype)).flatten(1).sum(1)
        per_token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        mask = mask.to(per_token.dtype)
        return (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)

    return scalars


def _batch_extras(inputs, targets, loss_mask):
    targets = targets if targets is not None else torch.zeros(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    loss_mask = loss_mask if loss_mask is not None else torch.ones(targets.shape, device=inputs.device)
    return targets, loss_mask.float()


# ---------------------------------------------------------------- exact route


def per_sample_gradients(model: nn.Module, inputs: torch.Tensor, names: list[str], output: str = "sum",
                         targets=None, loss_mask=None, seed: int = 0, chunk_size: Optional[int] = None) -> dict:
    """{parameter name: (n, *shape)} gradients of each sample's scalar output, for the named parameters."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    wanted = {k: params[k] for k in names}
    fixed = {k: v for k, v in params.items() if k not in wanted}
    scalars = _scalar_fn(model, output, targets, loss_mask, seed, inputs)
    targets, loss_mask = _batch_extras(inputs, targets, loss_mask)

    def one(p, x, target, mask):
        return scalars({**fixed, **p}, x[None], target[None], mask[None])[0]

    with _explicit_attention(model):
        return vmap(grad(one), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)(wanted, inputs, targets, loss_mask)


def module_kernels(model: nn.Module, inputs: torch.Tensor, groups: Union[str, dict] = "head", output: str = "sum",
                   targets=None, loss_mask=None, seed: int = 0, chunk_size: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Module name -> (n, n) float64 kernel K_l = J_l J_l^T on the probe batch `inputs` (n, ...)."""
    layout = groups if isinstance(groups, dict) and all(isinstance(v[0], tuple) for v in groups.values()) \
        else parameter_groups(model, groups)
    names = sorted({piece[0] for pieces in layout.values() for piece in pieces})
    grads = per_sample_gradients(model, inputs, names, output, targets, loss_mask, seed, chunk_size)
    kernels = {}
    for module, pieces in layout.items():
        kernel = torch.zeros(len(inputs), len(inputs), dtype=torch.float64, device=inputs.device)
        for piece in pieces:
            jac = _take(grads[piece[0]], piece, batch_dims=1).flatten(1).double()  # (n, p_piece)
            kernel += jac @ jac.T
        kernels[module] = kernel
    return kernels


@dataclass
class KernelStats:
    lambda_max: float
    trace: float
    effective_rank: float  # exp of the entropy of the normalised singular values of J (Roy & Vetterli, 2007)
    spectrum: list[float]  # eigenvalues, largest first


def kernel_stats(kernel: torch.Tensor) -> KernelStats:
    eigenvalues = torch.linalg.eigvalsh(kernel.double()).clamp(min=0).flip(0)
    singular = eigenvalues.sqrt()
    total = singular.sum()
    if total > 0:
        p = singular / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
        rank = math.exp(entropy)
    else:
        rank = 0.0
    return KernelStats(eigenvalues[0].item(), kernel.diagonal().sum().item(), rank, eigenvalues.tolist())


# ---------------------------------------------------------------- matrix-free route


def lambda_max_matrix_free(model: nn.Module, inputs: torch.Tensor, groups: dict[str, list[Slice]], output: str = "sum",
                           targets=None, loss_mask=None, seed: int = 0, iterations: int = 20, tol: float = 1e-6,
                           init: Optional[dict[str, torch.Tensor]] = None) -> dict[str, tuple[float, torch.Tensor]]:
    """Module name -> (lambda_max of K_l, its eigenvector), by power iteration with K_l v = J_l (J_l^T v).

    No n x n kernel and no per-sample gradient is formed; one forward pass and its pullback serve every
    module. `init`: previous eigenvectors by module (warm start). A module stops when its estimate
    changes by less than `tol` (relative) or after `iterations` products.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = sorted({piece[0] for pieces in groups.values() for piece in pieces})
    wanted = {k: params[k] for k in names}
    fixed = {k: v for k, v in params.items() if k not in wanted}
    scalars = _scalar_fn(model, output, targets, loss_mask, seed, inputs)
    targets, loss_mask = _batch_extras(inputs, targets, loss_mask)
    dtype = next(iter(wanted.values())).dtype
    generator = torch.Generator().manual_seed(seed)

    def s(p):
        return scalars({**fixed, **p}, inputs, targets, loss_mask)

    results = {}
    with _explicit_attention(model):
        _, pullback = vjp(s, wanted)
        # J u as the transpose of the (linear) map v -> J^T v: a second vjp. (torch.func.jvp would do,
        # but its decompositions are built with the deprecated torch.jit.script.)
        _, transpose = vjp(lambda w: pullback(w)[0], torch.zeros(len(inputs), dtype=dtype, device=inputs.device))
        for module, pieces in groups.items():
            masks = {}  # 1 on the module's coordinates of each of its parameters
            for name, axis, start, stop in pieces:
                mask = masks.setdefault(name, torch.zeros_like(wanted[name]))
                _take(mask, (name, axis, start, stop)).fill_(1.0)
            previous = (init or {}).get(module)
            v = previous.clone() if previous is not None else torch.randn(len(inputs), generator=generator)
            v = v.to(inputs.device, dtype)
            v /= v.norm()
            estimate = 0.0
            for _ in range(iterations):
                (cotangent,) = pullback(v)  # J^T v, then kept on the module's coordinates
                tangent = {k: cotangent[k] * masks[k] if k in masks else torch.zeros_like(cotangent[k]) for k in names}
                (product,) = transpose(tangent)  # J_l J_l^T v
                new_estimate = float(v @ product)
                norm = product.norm()
                if norm == 0:
                    estimate = 0.0
                    break
                v = product / norm
                converged = abs(new_estimate - estimate) <= tol * max(abs(new_estimate), 1e-30)
                estimate = new_estimate
                if converged:
                    break
            results[module] = (estimate, v.detach())
    return results


def reference_module_kernels(model: nn.Module, inputs: torch.Tensor, groups: dict[str, list[Slice]],
                             scalar) -> dict[str, torch.Tensor]:
    """The slow, straightforward computation the fast routes are checked and timed against.

    `torch.autograd.functional.jacobian` of `scalar(logits)` (per-sample scalars, (n,)) with respect to
    all parameters flattened into one vector; each module's columns are sliced out and their Gram formed.
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])

    def f(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            params[name] = vector[offset : offset + size].view(shape)
            offset += size
        return scalar(functional_call(model, params, (inputs,)))

    jacobian = torch.autograd.functional.jacobian(f, flat)  # (n, P)
    index, offset = {}, 0
    for name, shape in zip(names, shapes):
        index[name] = torch.arange(math.prod(shape)).view(shape) + offset
        offset += math.prod(shape)
    kernels = {}
    for module, pieces in groups.items():
        cols = torch.cat([_take(index[name], (name, axis, a, b)).flatten() for name, axis, a, b in pieces])
        j = jacobian[:, cols].double()
        kernels[module] = j @ j.T
    return kernels
