"""Hook points: the one observability primitive of caplab models.

A `HookPoint` is an identity module placed on every interesting activation and
named as in TransformerLens (`blocks.0.attn.hook_pattern`, ...). Hooks are
plain PyTorch forward hooks, added only inside a `with` block, so no hook ever
outlives the code that asked for it (TransformerLens keeps hooks as global
state; we do not).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

# fn(activation, hook_point) -> replacement activation or None (keep as is); a backward hook gets the
# activation's gradient instead and may return a replacement gradient
HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
# where a hook goes: a hook name, several names, or a predicate on names (as TransformerLens accepts)
HookNames = "str | Iterable[str] | Callable[[str], bool]"


class HookPoint(nn.Module):
    """Identity module whose output can be read or replaced by scoped hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # filled in by `name_hook_points`

    @property
    def is_hooked(self) -> bool:
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def name_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint its dotted module path as name; return them by name."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


class HookedModule(nn.Module):
    """Mixin for models with hook points: scoped hooks and activation caches.

    Subclasses call `self.setup_hooks()` at the end of `__init__`.
    """

    def setup_hooks(self) -> None:
        self.hook_points = name_hook_points(self)

    def _resolve(self, names: "str | Iterable[str] | Callable[[str], bool] | None") -> list[str]:
        if names is None:
            return list(self.hook_points)
        if callable(names):
            return [n for n in self.hook_points if names(n)]
        if isinstance(names, str):
            names = [names]
        names = list(names)
        unknown = [n for n in names if n not in self.hook_points]
        if unknown:
            raise KeyError(f"unknown hook point {unknown[0]!r}; valid: {', '.join(self.hook_points)}")
        return names

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[HookNames, HookFn]] = (),
              bwd_hooks: Iterable[tuple[HookNames, HookFn]] = ()) -> Iterator[None]:
        """Attach hooks for the duration of the `with` block, as TransformerLens's `hooks` does.

        Each entry is `(where, fn)`: `where` a hook name, a list of names or a predicate on names (every
        matching point gets `fn`). Forward: `fn(activation, hook)` may return a tensor to replace the
        activation. Backward: `fn(gradient, hook)` sees the gradient of the activation and may return a
        replacement gradient.
        """
        handles = []
        try:
            for where, fn in fwd_hooks:
                for name in self._resolve(where):
                    handles.append(self.hook_points[name].register_forward_hook(_adapt(fn)))
            for where, fn in bwd_hooks:
                for name in self._resolve(where):
                    handles.append(self.hook_points[name].register_forward_hook(_on_gradient(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Iterable[tuple[HookNames, HookFn]] = (),
                       bwd_hooks: Iterable[tuple[HookNames, HookFn]] = ()) -> torch.Tensor:
        """The model's output on `tokens` with the hooks attached; backward hooks fire when that output's graph
        is backpropagated (they hang on this forward's activations, not on the model)."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(tokens)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: "str | Iterable[str] | Callable[[str], bool] | None" = None,
        detach: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model and return `(logits, cache)`, cache keyed by hook name.

        Arguments:
            tokens: (batch, pos) token ids.
            names: hook names to cache, a predicate on names, or None for all.
            detach: detach cached tensors from the autograd graph.
        """
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach() if detach else x

        with self.hooks((name, save) for name in self._resolve(names)):
            logits = self(tokens)
        return logits, cache


def _adapt(fn: HookFn):
    def forward_hook(module: HookPoint, inputs, output):
        return fn(output, module)

    return forward_hook


def _on_gradient(fn: HookFn):
    """A forward hook that hangs `fn` on the activation's gradient (a tensor hook outlives the `with` block only
    as long as that forward's graph does)."""
    def forward_hook(module: HookPoint, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: fn(grad, module))

    return forward_hook
