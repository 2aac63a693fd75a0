"""Compositions of bijections (Ramesh et al., ICML 2024, arXiv 2311.12997).

A world holds `n_depths` depths; each depth has the identity plus `n_functions`
random functions on sequences of `input_len` tokens over an alphabet of
`n_tokens`. A function is either an elementwise bijection of the alphabet or,
at the depths listed in `permutation_depths`, a permutation of the positions.
A composition picks one function per slot and applies slot 0 first.

Documents (one token per item):

    step_by_step:  S f0 f1 .. f{D-1} | x | f0(x) | f1(f0(x)) | .. | F(x)
    direct:        S f0 f1 .. f{D-1} | x | F(x)

The model is trained on a few compositions (the split) and evaluated by
greedy generation from the prompt `S f.. | x |` on compositions it never saw.

Splits (`split`):
    random            n_train_compositions in-order compositions, uniformly
    base              identity + every single-function composition + n_train_compositions random ones
    random_combo      n_train_compositions from the out-of-order family, where slot s may
                      hold a non-identity function of any depth (in-order ones included)
    base_combo        base + n_train_compositions out-of-order-family compositions
    randombase_combo  base + n_train_inorder random in-order + n_train_compositions out-of-order

The official code draws out-of-order candidates from `range(n_functions)`,
which includes the identity and never uses the last function; here slot
candidates are the identity or any of the `n_functions` non-identity functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from caplab.tasks.base import Batch, Task

EVAL_CHUNK = 4096  # sequences generated at once during evaluation


@dataclass
class CompositionsConfig:
    n_tokens: int = 10  # alphabet of the data tokens
    input_len: int = 6  # tokens per input x
    n_depths: int = 5  # functions per composition
    n_functions: int = 3  # non-identity functions per depth
    permutation_depths: list[int] = field(default_factory=list)  # depths of position permutations
    format: Literal["step_by_step", "direct"] = "step_by_step"
    split: Literal["random", "base", "random_combo", "base_combo", "randombase_combo"] = "random"
    n_train_compositions: int = 50
    n_train_inorder: int = 0  # randombase_combo only
    seed: int = 0  # the world: functions and split (training has its own seed)
    loss_on: Literal["all", "outputs"] = "all"  # the paper trains on every token
    eval_compositions: int = 0  # in-order compositions evaluated; 0 = all of them
    eval_inputs: int = 8  # inputs per evaluated composition
    eval_displaced: int = -1  # out-of-order compositions evaluated, split evenly by displaced-slot count; -1: 256 under *_combo splits, none otherwise

    def __post_init__(self) -> None:
        for name in ("n_tokens", "input_len", "n_depths", "n_functions", "eval_inputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_displaced < -1:
            raise ValueError(f"task.eval_displaced must be -1 (automatic) or a count, got {self.eval_displaced}")
        bad = [d for d in self.permutation_depths if not 0 <= d < self.n_depths]
        if bad:
            raise ValueError(f"task.permutation_depths has depth {bad[0]} outside 0..{self.n_depths - 1}")


class Compositions(Task):
    """The compositional-capabilities DGP (see module docstring)."""

    name = "compositions"
    Config = CompositionsConfig
    primary_metric = "unseen_exact"

    def __init__(self, cfg: CompositionsConfig | None = None) -> None:
        self.cfg = cfg = cfg or CompositionsConfig()
        V, L, D, F = cfg.n_tokens, cfg.input_len, cfg.n_depths, cfg.n_functions
        self.functions_per_depth = F + 1  # index 0 is the identity
        n_funcs = D * (F + 1)
        # vocabulary: data tokens, one token per function, separator, start
        self.function_offset = V
        self.sep = V + n_funcs
        self.start = self.sep + 1
        self.vocab_size = self.start + 1
        steps = D if cfg.format == "step_by_step" else 1
        self.prompt_len = 1 + D + 1 + L + 1
        self.doc_len = 1 + D + 1 + L + steps * (1 + L)
        self.seq_len = self.doc_len - 1

        rng = np.random.default_rng(cfg.seed)
        token_maps = np.tile(np.arange(V), (n_funcs, 1))  # (G, V): identity unless a bijection
        position_perms = np.tile(np.arange(L), (n_funcs, 1))  # (G, L): identity unless a permutation
        for d in range(D):
            table, size = (position_perms, L) if d in cfg.permutation_depths else (token_maps, V)
            drawn = [tuple(range(size))]  # the identity
            for i in range(1, F + 1):
                perm = rng.permutation(size)
                # not the identity nor a repeat of its depth's others, while unused ones remain
                while tuple(perm) in drawn and len(set(drawn)) < math.factorial(size):
                    perm = rng.permutation(size)
                drawn.append(tuple(perm))
                table[self.function_id(d, i)] = perm
        self.token_maps = torch.from_numpy(token_maps)
        self.position_perms = torch.from_numpy(position_perms)

        self.inorder = self._all_inorder()  # (n_inorder, D) function ids
        self.train_compositions = self._make_split(rng)  # (n_train, D)
        train_keys = {tuple(c) for c in self.train_compositions.tolist()}
        if len(train_keys) != len(self.train_compositions):
            raise AssertionError("training split has duplicate compositions")
        self._train_keys = train_keys
        self._device_cache: dict = {}

    # ------------------------------------------------------------ the world

    def function_id(self, depth: int, index: int) -> int:
        """Global id of function `index` (0 = identity) of `depth`."""
        return depth * self.functions_per_depth + index

    def is_identity(self, function_ids: torch.Tensor) -> torch.Tensor:
        return function_ids % self.functions_per_depth == 0

    def n_non_identity(self, compositions: torch.Tensor) -> torch.Tensor:
        """(n, D) compositions -> (n,) number of non-identity functions."""
        return (~self.is_identity(compositions)).sum(-1)

    def _all_inorder(self) -> torch.Tensor:
        D, Fp1 = self.cfg.n_depths, self.functions_per_depth
        if Fp1**D > 2_000_000:
            raise ValueError(f"(n_functions+1)^n_depths = {Fp1 ** D} in-order compositions is too many to enumerate")
        indices = np.indices((Fp1,) * D).reshape(D, -1).T  # (Fp1^D, D), slot s holds index i_s
        return torch.from_numpy(indices + np.arange(D) * Fp1)

    def _random_combo(self, rng: np.random.Generator, n: int, exclude: set, displaced_only: bool) -> list:
        """n distinct out-of-order-family compositions not in `exclude`."""
        D, F = self.cfg.n_depths, self.cfg.n_functions
        available = self._combo_count(displaced_only) - sum(self._is_displaced(c) or not displaced_only for c in exclude)
        if n > available:
            raise ValueError(f"asked for {n} out-of-order compositions; only {available} remain")
        chosen: list = []
        seen = set(exclude)
        while len(chosen) < n:
            slots = []
            for s in range(D):
                k = int(rng.integers(D * F + 1))  # 0: identity, else (depth, function) pair
                slots.append(self.function_id(s, 0) if k == 0 else self.function_id((k - 1) // F, 1 + (k - 1) % F))
            key = tuple(slots)
            if key in seen or (displaced_only and not self._is_displaced(key)):
                continue
            seen.add(key)
            chosen.append(key)
        return chosen

    def _is_displaced(self, composition: tuple) -> bool:
        """True if some slot holds a non-identity function of another depth."""
        return self.n_displaced(composition) > 0

    def n_displaced(self, composition) -> int:
        """How many slots hold a non-identity function of another depth."""
        Fp1 = self.functions_per_depth
        return sum(g % Fp1 != 0 and g // Fp1 != s for s, g in enumerate(composition))

    def _displaced_by_count(self, total: int, exclude: set) -> list:
        """Up to total // n_depths distinct compositions with exactly m displaced slots, for each m = 1..n_depths.

        m slots, chosen uniformly, hold a non-identity function of another depth; the others hold the identity
        or one of their own depth's functions. Stratified so that the rare few-displaced compositions (one
        displaced slot is about 1.5% of the family at the paper's sizes) are evaluated as often as the rest.
        Each count draws from its own stream of the world's seed and skips `exclude` (the training split),
        so two splits of one world are evaluated on the same compositions but for their training ones.
        """
        D, F = self.cfg.n_depths, self.cfg.n_functions
        per_count, chosen = total // D, []
        for m in range(1, D + 1):
            family = math.comb(D, m) * ((D - 1) * F) ** m * (F + 1) ** (D - m)
            want = min(per_count, family - sum(self.n_displaced(c) == m for c in exclude))
            found: set = set()
            rng = np.random.default_rng([self.cfg.seed, 7, m])
            while len(found) < want:
                moved = set(rng.choice(D, size=m, replace=False).tolist())
                slots = []
                for s in range(D):
                    if s in moved:
                        depth = int(rng.choice([d for d in range(D) if d != s]))
                        slots.append(self.function_id(depth, 1 + int(rng.integers(F))))
                    else:
                        slots.append(self.function_id(s, int(rng.integers(F + 1))))
                key = tuple(slots)
                if key not in exclude and key not in found:
                    found.add(key)
                    chosen.append(key)
        return chosen

    def _combo_count(self, displaced_only: bool) -> int:
        D, F = self.cfg.n_depths, self.cfg.n_functions
        total = (D * F + 1) ** D
        return total - (F + 1) ** D if displaced_only else total

    def _base(self) -> list:
        D, F = self.cfg.n_depths, self.cfg.n_functions
        identity = [self.function_id(s, 0) for s in range(D)]
        base = [tuple(identity)]
        for s in range(D):
            for i in range(1, F + 1):
                single = list(identity)
                single[s] = self.function_id(s, i)
                base.append(tuple(single))
        return base

    def _random_inorder(self, rng: np.random.Generator, n: int, exclude: set) -> list:
        pool = [tuple(c) for c in self.inorder.tolist() if tuple(c) not in exclude]
        if n > len(pool):
            raise ValueError(f"asked for {n} random in-order training compositions; only {len(pool)} remain")
        return [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]

    def _make_split(self, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        n = cfg.n_train_compositions
        if cfg.split == "random":
            chosen = self._random_inorder(rng, n, set())
        elif cfg.split == "base":
            chosen = self._base()
            chosen += self._random_inorder(rng, n, set(chosen))
        elif cfg.split == "random_combo":
            chosen = self._random_combo(rng, n, set(), displaced_only=False)
        elif cfg.split == "base_combo":
            chosen = self._base()
            chosen += self._random_combo(rng, n, set(chosen), displaced_only=False)
        else:  # randombase_combo
            chosen = self._base()
            chosen += self._random_inorder(rng, cfg.n_train_inorder, set(chosen))
            chosen += self._random_combo(rng, n, set(chosen), displaced_only=False)
        if not chosen:
            raise ValueError("the training split is empty; raise task.n_train_compositions")
        return torch.tensor(chosen, dtype=torch.long)

    # ------------------------------------------------------------ documents

    def apply(self, function_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply one function per row: function_ids (n,), x (n, L) -> (n, L)."""
        token_maps, position_perms = self._cached("tables", x.device, lambda: (self.token_maps.to(x.device), self.position_perms.to(x.device)))
        x = token_maps[function_ids].gather(1, x)  # elementwise bijection
        return x.gather(1, position_perms[function_ids])  # position permutation

    def documents(self, compositions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Build documents: compositions (n, D), inputs (n, L) -> (n, doc_len) token ids."""
        n = x.shape[0]
        sep = torch.full((n, 1), self.sep, dtype=torch.long, device=x.device)
        parts = [torch.full((n, 1), self.start, dtype=torch.long, device=x.device), compositions + self.function_offset, sep, x]
        state = x
        for s in range(self.cfg.n_depths):
            state = self.apply(compositions[:, s], state)
            if self.cfg.format == "step_by_step":
                parts += [sep, state]
        if self.cfg.format == "direct":
            parts += [sep, state]
        return torch.cat(parts, dim=1)

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        train = self._cached("train", device, lambda: self.train_compositions.to(device))
        which = torch.randint(len(train), (batch_size,), generator=generator, device=device)
        compositions = train[which]  # (B, D)
        x = torch.randint(self.cfg.n_tokens, (batch_size, self.cfg.input_len), generator=generator, device=device)
        docs = self.documents(compositions, x)  # (B, doc_len)
        mask = torch.ones(batch_size, self.seq_len, device=device)
        if self.cfg.loss_on == "outputs":
            mask[:, : self.prompt_len - 1] = 0.0  # targets before the first generated token
        return Batch(docs[:, :-1], docs[:, 1:], mask, {"compositions": compositions})

    def _cached(self, key: str, device, make):
        full_key = (key, str(device))
        if full_key not in self._device_cache:
            self._device_cache[full_key] = make()
        return self._device_cache[full_key]

    # ------------------------------------------------------------ evaluation

    def eval_sets(self) -> dict[str, torch.Tensor]:
        """Compositions evaluated, by group: seen (= training), unseen in-order, displaced."""
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + 1)
        unseen = torch.tensor([c for c in self.inorder.tolist() if tuple(c) not in self._train_keys], dtype=torch.long)
        unseen = unseen.reshape(-1, cfg.n_depths)
        if cfg.eval_compositions and cfg.eval_compositions < len(unseen):
            unseen = unseen[torch.from_numpy(np.sort(rng.choice(len(unseen), cfg.eval_compositions, replace=False)))]
        sets = {"seen": self.train_compositions, "unseen": unseen}
        count = cfg.eval_displaced if cfg.eval_displaced >= 0 else (256 if cfg.split.endswith("combo") else 0)
        if count and cfg.n_depths > 1:
            displaced = self._displaced_by_count(count, set(self._train_keys))
            sets["displaced"] = torch.tensor(displaced, dtype=torch.long).reshape(-1, cfg.n_depths)
        return sets

    def _eval_documents(self, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Fixed evaluation documents (same inputs at every evaluation, on `device`)."""

        def make():
            generator = torch.Generator().manual_seed(self.cfg.seed + 2)
            groups, docs = {}, []
            offset = 0
            for group, comps in self.eval_sets().items():
                comps = comps.repeat_interleave(self.cfg.eval_inputs, dim=0)  # (n * inputs, D)
                x = torch.randint(self.cfg.n_tokens, (len(comps), self.cfg.input_len), generator=generator)
                docs.append(self.documents(comps, x))
                groups[group] = (offset, offset + len(comps), comps)
                offset += len(comps)
            return groups, torch.cat(docs).to(device)

        return self._cached("eval", device, make)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Greedy-generation accuracy of the final output F(x).

        Returns `{group}_exact` (all L tokens right) and `{group}_token` (per-token)
        for groups seen / unseen / displaced, `exact_k{k}` over all in-order
        compositions evaluated, by number k of non-identity functions, and
        `displaced_exact_m{m}` by number m of displaced slots and
        `displaced_exact_k{k}` by k (to read beside `exact_k{k}`).
        """
        groups, docs = self._eval_documents(device)
        L = self.cfg.input_len
        correct = []
        for chunk in docs.split(EVAL_CHUNK):
            out = model.generate(chunk[:, : self.prompt_len], self.doc_len - self.prompt_len)
            correct.append(out[:, -L:] == chunk[:, -L:])
        correct = torch.cat(correct).float().cpu()  # (n_docs, L)
        token, exact = correct.mean(1), correct.min(1).values

        metrics = {}
        for group, (lo, hi, _) in groups.items():
            metrics[f"{group}_exact"] = exact[lo:hi].mean().item()
            metrics[f"{group}_token"] = token[lo:hi].mean().item()
        inorder = [g for g in ("seen", "unseen") if g in groups]
        comps = torch.cat([groups[g][2] for g in inorder])
        inorder_exact = torch.cat([exact[groups[g][0] : groups[g][1]] for g in inorder])
        is_inorder = (comps // self.functions_per_depth == torch.arange(self.cfg.n_depths)).all(1)
        k = self.n_non_identity(comps)
        for n_funcs in range(self.cfg.n_depths + 1):
            pick = is_inorder & (k == n_funcs)
            if pick.any():
                metrics[f"exact_k{n_funcs}"] = inorder_exact[pick].mean().item()
        if "displaced" in groups:
            lo, hi, comps = groups["displaced"]
            moved = torch.tensor([self.n_displaced(c) for c in comps.tolist()])
            for m in moved.unique().tolist():
                metrics[f"displaced_exact_m{m}"] = exact[lo:hi][moved == m].mean().item()
            k = self.n_non_identity(comps)  # m and k are confounded: compare displaced_exact_k{k} with exact_k{k}
            for n_funcs in k.unique().tolist():
                metrics[f"displaced_exact_k{n_funcs}"] = exact[lo:hi][k == n_funcs].mean().item()
        return metrics

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = ("seen_exact", "unseen_exact", "unseen_token", "displaced_exact")
        return {k: metrics[k] for k in keys if k in metrics}

    # ------------------------------------------------------------ reading

    def token_name(self, token: int) -> str:
        if token < self.function_offset:
            return f"X{token}"
        if token < self.sep:
            d, i = divmod(token - self.function_offset, self.functions_per_depth)
            return f"T{d}_{i}"
        return "|" if token == self.sep else "S"

    def special_tokens(self) -> dict:
        return {"bos": self.start, "eos": None, "pad": None}  # documents have one length: no end, no padding

    def decode(self, tokens) -> str:
        return " ".join(self.token_name(int(t)) for t in tokens)

    def describe(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "vocab_size": self.vocab_size,
            "doc_len": self.doc_len,
            "prompt_len": self.prompt_len,
            "n_inorder_compositions": len(self.inorder),
            "n_train_compositions": len(self.train_compositions),
            "train_compositions": [
                " ".join(self.token_name(g + self.function_offset) for g in comp) for comp in self.train_compositions.tolist()
            ],
        }
