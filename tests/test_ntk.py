"""Module NTKs against an explicit float64 Jacobian, closed forms and the matrix-free route."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from caplab import GPT, GPTConfig
from caplab.analysis.ntk import (kernel_stats, lambda_max_matrix_free, module_kernels, parameter_groups,
                                 reference_module_kernels)


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layers=2, n_heads=2, d_model=16, d_vocab=11, n_ctx=6)).double()


@pytest.mark.parametrize("output", ["sum", "projection", "loss"])
def test_module_kernels_match_the_explicit_jacobian_and_sum_to_the_whole(output):
    model = tiny_gpt()
    inputs = torch.randint(11, (5, 6), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(11, (5, 6), generator=torch.Generator().manual_seed(2))
    kernels = module_kernels(model, inputs, "head", output=output, targets=targets, seed=3)
    if output == "sum":
        scalar = lambda logits: logits.flatten(1).sum(1)  # noqa: E731
    elif output == "projection":
        r = torch.randn(6, 11, generator=torch.Generator().manual_seed(3))
        r = (r / r.norm()).double()
        scalar = lambda logits: (logits * r).flatten(1).sum(1)  # noqa: E731
    else:
        scalar = lambda logits: F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(5, 6).mean(1)  # noqa: E731
    groups = parameter_groups(model, "head")
    references = reference_module_kernels(model, inputs, groups, scalar)
    assert "blocks.1.attn.head1" in groups and len(kernels) == len(groups)
    for module in groups:
        reference = references[module]
        error = (kernels[module] - reference).norm() / reference.norm().clamp(min=1e-300)
        assert error < 1e-6, (module, error.item())
    whole = reference_module_kernels(model, inputs, {"all": [(n, None, 0, 0) for n, _ in model.named_parameters()]},
                                     scalar)["all"]
    total = sum(kernels.values())
    assert ((total - whole).norm() / whole.norm()).item() < 1e-6


def test_groupings_partition_the_parameters():
    model = tiny_gpt()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    for by in ("head", "submodule", "layer"):
        covered = {}
        for pieces in parameter_groups(model, by).values():
            for name, axis, start, stop in pieces:
                size = sizes[name] if axis is None else sizes[name] // model.get_parameter(name).shape[axis] * (stop - start)
                covered[name] = covered.get(name, 0) + size
        assert covered == sizes, by
    assert set(parameter_groups(model, "layer")) == {"embed", "blocks.0", "blocks.1", "final"}


def test_linear_model_kernel_is_the_gram_of_its_inputs():
    model = nn.Linear(4, 1, bias=False).double()
    inputs = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)).double()
    kernels = module_kernels(model, inputs, {"w": ["weight"]})
    torch.testing.assert_close(kernels["w"], inputs @ inputs.T)


def test_kernel_stats_closed_form():
    stats = kernel_stats(torch.diag(torch.tensor([1.0, 4.0])))
    assert stats.lambda_max == pytest.approx(4.0) and stats.trace == pytest.approx(5.0)
    p = torch.tensor([2 / 3, 1 / 3])  # singular values 2 and 1
    assert stats.effective_rank == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert stats.spectrum == pytest.approx([4.0, 1.0])


def test_matrix_free_lambda_max_matches_the_exact_one_and_warm_starts():
    model = tiny_gpt()
    inputs = torch.randint(11, (8, 6), generator=torch.Generator().manual_seed(4))
    groups = parameter_groups(model, "head")
    kernels = module_kernels(model, inputs, groups)
    chosen = {m: groups[m] for m in ("blocks.0.attn.head0", "blocks.1.mlp.fc_in", "embed")}
    results = lambda_max_matrix_free(model, inputs, chosen, iterations=300, tol=1e-13)
    for module, (estimate, _) in results.items():
        exact = torch.linalg.eigvalsh(kernels[module])[-1].item()
        assert estimate == pytest.approx(exact, rel=1e-6), module
    # warm start from the eigenvectors: converged at once
    again = lambda_max_matrix_free(model, inputs, chosen, iterations=2, init={m: v for m, (_, v) in results.items()})
    for module, (estimate, _) in again.items():
        assert estimate == pytest.approx(results[module][0], rel=1e-6)
