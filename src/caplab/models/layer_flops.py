"""Training FLOPs of any model built from linear and conv layers, counted from the shapes one forward pass sees.

Conventions are those of `torch.utils.flop_counter` (and of `caplab.train.flops`
for the GPT): a linear layer costs 2 x batch x in x out, a conv
2 x batch x out_pixels x out_channels x in_channels x kernel_area / groups.
Backward costs the same again for the input gradient (skipped where the layer's
input needs no gradient: the first layer, fed the data) and again for the
weight gradient (skipped for a frozen weight). Norms, activations, pooling and
the optimizer are not counted (small beside the products).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCost:
    forward: int  # FLOPs of the forward product for one sample
    input_grad: bool  # whether backward computes this layer's input gradient


def trace_layer_costs(model: nn.Module, example: torch.Tensor) -> dict[str, LayerCost]:
    """Per-sample forward FLOPs of every nn.Linear / nn.Conv2d (by weight name), from one forward on `example`.

    `example`: one input of the model's shape, e.g. (1, channels, height, width). The model's mode and
    weights are left as they were (the pass runs in eval mode; its graph is discarded).
    """
    costs: dict[str, LayerCost] = {}
    handles = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1]
                per = 2 * output[0].numel() * (module.in_channels // module.groups) * kernel
            else:
                per = 2 * output[0].numel() * module.in_features
            costs[f"{name}.weight"] = LayerCost(per, x.requires_grad)  # False for a layer fed the data itself
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(record(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():  # so that an input computed from parameters is seen to need a gradient
            model(example.detach())
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return costs


def step_flops(costs: Mapping[str, LayerCost], batch: int, frozen: Mapping[str, float] = {}) -> int:
    """Forward + backward FLOPs of one training step on `batch` samples; `frozen`: weight name -> frozen share."""
    total = 0
    for name, cost in costs.items():
        product = cost.forward * batch
        total += product
        if cost.input_grad:
            total += product
        total += round(product * (1.0 - frozen.get(name, 0.0)))
    return total
