"""Compile a categorical RASP program (`caplab.rasp`) into the weights of a caplab GPT.

The construction follows Tracr's (Lindner et al., 2023) in spirit, written
for caplab's model:

- The residual stream has one named direction per (SOp, value) pair, plus
  `one` (1 everywhere), `bos` (1 at the BOS position only), and one scratch
  direction per SelectorWidth. Each SOp is a one-hot code over its values.
- The input is `BOS x_0 ... x_{n-1}`; token embeddings write `one` and
  `tokens:v`, position p >= 1 writes `indices:p-1`.
- Map and SequenceMap become MLP hidden units (one per input value, or per
  pair of values) with ReLU; Aggregate becomes one attention head whose
  query-key bilinear form is the predicate table times a large inverse
  temperature, with BOS as a half-strength fallback (nothing selected: the
  head reads BOS, which carries no value, so the output is None).
  SelectorWidth becomes a head attending to BOS and the selected keys alike,
  which writes 1 / (width + 1) into its scratch direction, and an MLP that
  decodes that number into a one-hot width with pairs of ReLU steps.
- At the BOS position an SOp may hold a fixed value (a SelectorWidth reads
  width 0 there, and Maps of it follow). `_bos_values` tracks it, and every
  head cancels it with weights of ordinary size: BOS never matches a
  predicate as a key or as a query, and carries no value when a head falls
  back to it. (Switching the decoder off at BOS would need weights in the
  thousands, which a little weight noise turns into garbage.)
- SOps are placed on the earliest attention or MLP sub-layer after their
  inputs; several heads share a layer when needed.

Differences from Tracr: categorical encodings only (no numerical SOps or
numerical MLPs); no layer norm and no causal mask (as Tracr's assembled
models); caplab's one combined model shape (every block has attention and an
MLP, empty ones are zero); the unembedding reads the output SOp's one-hot code
times `logit_scale` (Tracr reads it at scale 1), so cross-entropy is small on
a correct compiled model and fine-tuning starts from a sensible loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

from caplab.models.gpt import GPT, GPTConfig
from caplab.rasp import (AMBIGUOUS, Aggregate, Map, SelectorWidth, SequenceMap, SOp, _Indices, _Tokens,
                         indices, tokens, topological_order, value_sets)



def inverse_temperature(max_len: int) -> float:
    """Score of a selected key. Softmax leaks max_len * exp(-beta) onto unselected keys (< 5e-5 of the mass);
    larger values would turn small weight noise into large score noise (beta times the noise)."""
    return 10.0 + math.log(max_len + 1)



@dataclass
class CompiledProgram:
    """A compiled program: the model and how to talk to it.

    vocabulary: token id -> value (id 0 is BOS); input values and output values share ids where equal.
    """

    program: SOp
    model: GPT
    vocabulary: list
    input_values: list
    output_values: list
    max_len: int
    logit_scale: float
    residual_names: list[str]  # name of each residual direction ("" for padding)

    BOS = 0

    def token_id(self, value: Hashable) -> int:
        return self.vocabulary.index(value)

    def encode(self, sequences: Sequence[Sequence[Hashable]]) -> torch.Tensor:
        """(batch, n + 1) token ids, BOS first; every sequence has the same length n <= max_len."""
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1 or not 0 < lengths.pop() <= self.max_len:
            raise ValueError(f"sequences must share one length in 1..{self.max_len}")
        ids = {v: i for i, v in enumerate(self.vocabulary)}
        unknown = next((v for s in sequences for v in s if v not in ids or v not in self.input_values), None)
        if unknown is not None:
            raise ValueError(f"{unknown!r} is not in the program's input vocabulary {self.input_values}")
        return torch.tensor([[self.BOS] + [ids[v] for v in s] for s in sequences])

    def decode(self, logits: torch.Tensor) -> list[list]:
        """Output values per input position (BOS dropped); None where no output logit reaches half the scale."""
        out_ids = torch.tensor([self.token_id(v) for v in self.output_values])
        scores = logits[:, 1:, out_ids]  # (batch, n, n_outputs)
        best, which = scores.max(-1)
        return [[self.output_values[w] if b > self.logit_scale / 2 else None for b, w in zip(row_b, row_w)]
                for row_b, row_w in zip(best.tolist(), which.tolist())]

    @torch.no_grad()
    def run(self, sequences: Sequence[Sequence[Hashable]]) -> list[list]:
        """The compiled model's output values on `sequences`."""
        return self.decode(self.model(self.encode(sequences)))


class _Residual:
    """Names -> directions of the residual stream."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1

    def __getitem__(self, name: str) -> int:
        return self.names.index(name)


def _direction(sop: SOp, value) -> str:
    return f"{sop.label}:{value!r}"


def _sublayers(order: list[SOp]) -> dict[str, int]:
    """Sub-layer of each SOp: -1 embedding, 2b attention of block b, 2b+1 MLP of block b (SelectorWidth: its MLP)."""
    where: dict[str, int] = {}
    for sop in order:
        after = max((where[c.label] for c in sop.children), default=-1)
        if isinstance(sop, (_Tokens, _Indices)):
            where[sop.label] = -1
        elif isinstance(sop, (Map, SequenceMap)):
            where[sop.label] = after + 1 if after % 2 == 0 else after + 2  # next odd sub-layer
        elif isinstance(sop, Aggregate):
            where[sop.label] = after + 1 if after % 2 == 1 else after + 2  # next even sub-layer
        elif isinstance(sop, SelectorWidth):
            where[sop.label] = (after + 1 if after % 2 == 1 else after + 2) + 1
        else:
            raise TypeError(f"not a RASP operation: {sop!r}")
    return where


def compile_program(program: SOp, vocabulary: Sequence[Hashable], max_len: int, logit_scale: float = 10.0,
                    output_vocabulary: Sequence[Hashable] = ()) -> CompiledProgram:
    """Compile `program` for inputs over `vocabulary` of length at most `max_len`.

    Arguments:
        output_vocabulary: extra output tokens to give ids to (so a task's answer tokens all exist).
    Returns a CompiledProgram whose `model` computes the program exactly (up to exp(-50) leaks) in float32.
    """
    if isinstance(program, (_Tokens, _Indices)):
        raise ValueError("compile a program that computes something (not the bare tokens or indices)")
    order = topological_order(program)
    values = value_sets(program, vocabulary, max_len)
    where = _sublayers(order)
    bos_values = _bos_values(order)
    n_layers = max(where.values()) // 2 + 1

    residual = _Residual()
    for name in ("one", "bos"):
        residual.add(name)
    for sop in order:
        for value in values[sop.label]:
            residual.add(_direction(sop, value))
        if isinstance(sop, SelectorWidth):
            residual.add(f"{sop.label}:scratch")

    heads = [[s for s in order if _attention_layer(s, where) == b] for b in range(n_layers)]
    n_heads = max(1, max(len(h) for h in heads))
    need = max([1] + [len(values[s.selector.queries.label]) + 1 for hs in heads for s in hs]
               + [len(values[s.inner.label]) for hs in heads for s in hs if isinstance(s, Aggregate)])
    d_head = max(need, math.ceil(len(residual.names) / n_heads))
    d_model = n_heads * d_head
    mlp_units = [_mlp_units([s for s in order if isinstance(s, (Map, SequenceMap, SelectorWidth)) and where[s.label] == 2 * b + 1],
                            values, max_len) for b in range(n_layers)]
    d_mlp = max(1, max(mlp_units))

    inputs = list(dict.fromkeys(vocabulary))
    vocab = ["<bos>"] + list(dict.fromkeys(inputs + list(values[program.label]) + list(output_vocabulary)))
    cfg = GPTConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp, n_ctx=max_len + 1,
                    d_vocab=len(vocab), bias=False, normalization_type="none", attention_dir="bidirectional",
                    act_fn="relu", tied_embeddings=False)
    weights = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in GPT(cfg).state_dict().items()}
    r = residual

    # embeddings
    embed, pos_embed = weights["embed.weight"], weights["pos_embed.weight"]
    embed[0, r["one"]] = embed[0, r["bos"]] = 1.0
    for value in inputs:
        embed[vocab.index(value), r["one"]] = 1.0
        if _find(order, "tokens"):
            embed[vocab.index(value), r[_direction(tokens, value)]] = 1.0
    if _find(order, "indices"):
        for i in range(max_len):
            pos_embed[i + 1, r[_direction(indices, i)]] = 1.0

    for b in range(n_layers):
        for h, sop in enumerate(heads[b]):
            _attention_head(weights, b, h, d_head, d_model, sop, values, bos_values, r, inverse_temperature(max_len))
        _mlp(weights, b, [s for s in order if where[s.label] == 2 * b + 1 and not isinstance(s, (_Tokens, _Indices))],
             values, r, max_len)

    for value in values[program.label]:
        weights["unembed.weight"][vocab.index(value), r[_direction(program, value)]] = logit_scale

    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    names = residual.names + [""] * (d_model - len(residual.names))
    return CompiledProgram(program, model.eval(), vocab, inputs, list(values[program.label]), max_len,
                           logit_scale, names)


def _find(order: list[SOp], label: str):
    return next((s for s in order if s.label == label), None)


def _attention_layer(sop: SOp, where: dict[str, int]) -> int:
    if isinstance(sop, Aggregate):
        return where[sop.label] // 2
    if isinstance(sop, SelectorWidth):
        return (where[sop.label] - 1) // 2
    return -1


def _mlp_units(sops: list[SOp], values: dict, max_len: int) -> int:
    units = 0
    for sop in sops:
        if isinstance(sop, Map):
            units += len(values[sop.inner.label])
        elif isinstance(sop, SequenceMap):
            units += len(values[sop.first.label]) * len(values[sop.second.label])
        else:  # SelectorWidth: two ReLUs per threshold, one for the largest width
            units += 2 * max_len + 1
    return units


def _bos_values(order: list[SOp]) -> dict[str, object]:
    """The value each SOp holds at the BOS position of a compiled model (None: its code is zero there)."""
    held: dict[str, object] = {}
    for sop in order:
        if isinstance(sop, SelectorWidth):
            held[sop.label] = 0  # the BOS query selects only BOS: weight 1 on it decodes to width 0
        elif isinstance(sop, Map):
            inner = held[sop.inner.label]
            held[sop.label] = None if inner is None else sop.fn(inner)
        elif isinstance(sop, SequenceMap):
            first, second = held[sop.first.label], held[sop.second.label]
            held[sop.label] = None if first is None or second is None else sop.fn(first, second)
        else:  # tokens, indices, Aggregate (the head cancels BOS's value)
            held[sop.label] = None
    return held


def _attention_head(weights: dict, block: int, head: int, d_head: int, d_model: int, sop: SOp, values: dict,
                    bos_values: dict, r: _Residual, beta: float) -> None:
    """One head computing Aggregate or the attention half of SelectorWidth."""
    qkv = weights[f"blocks.{block}.attn.qkv.weight"]  # rows: q, k, v, each (heads x d_head)
    out = weights[f"blocks.{block}.attn.out.weight"]  # columns: heads x d_head
    q_rows = slice(head * d_head, (head + 1) * d_head)
    k_rows = slice(d_model + head * d_head, d_model + (head + 1) * d_head)
    v_rows = slice(2 * d_model + head * d_head, 2 * d_model + (head + 1) * d_head)
    wq, wk, wv, wo = qkv[q_rows], qkv[k_rows], qkv[v_rows], out[:, q_rows]
    selector = sop.selector
    # the model divides scores by sqrt(d_head); the inverse temperature is split evenly between queries and
    # keys, which keeps scores least sensitive to small weight noise (densified fine-tuning)
    scale = math.sqrt(beta * math.sqrt(d_head))
    query_values = values[selector.queries.label]
    bos_key, bos_query = bos_values[selector.keys.label], bos_values[selector.queries.label]
    for j, query in enumerate(query_values):  # score(key, query) = beta * predicate(key, query)
        wq[j, r[_direction(selector.queries, query)]] = scale
        for key in values[selector.keys.label]:
            if selector.matches(key, query):
                wk[j, r[_direction(selector.keys, key)]] = scale
        if selector.matches(bos_key, query):  # BOS's fixed key value must not match
            wk[j, r["bos"]] = -scale
        if query == bos_query:  # nor may BOS's fixed query value select anything
            wq[j, r["bos"]] = -scale
    fallback = len(query_values)  # every query also scores BOS: half strength (Aggregate), full (SelectorWidth)
    wq[fallback, r["one"]] = scale
    if isinstance(sop, Aggregate):
        wk[fallback, r["bos"]] = 0.5 * scale
        for j, value in enumerate(values[sop.inner.label]):
            wv[j, r[_direction(sop.inner, value)]] = 1.0
            wo[r[_direction(sop, value)], j] = 1.0
            if value == bos_values[sop.inner.label]:  # falling back on BOS must read no value
                wv[j, r["bos"]] = -1.0
    else:  # the weight on BOS is 1 / (width + 1)
        wk[fallback, r["bos"]] = scale
        wv[0, r["bos"]] = 1.0
        wo[r[f"{sop.label}:scratch"], 0] = 1.0


def _mlp(weights: dict, block: int, sops: list[SOp], values: dict, r: _Residual, max_len: int) -> None:
    w_in = weights[f"blocks.{block}.mlp.fc_in.weight"]  # (d_mlp, d_model)
    w_out = weights[f"blocks.{block}.mlp.fc_out.weight"]  # (d_model, d_mlp)
    unit = 0
    for sop in sops:
        if isinstance(sop, Map):
            for value in values[sop.inner.label]:  # unit = [inner == value]
                w_in[unit, r[_direction(sop.inner, value)]] = 1.0
                w_out[r[_direction(sop, sop.fn(value))], unit] = 1.0
                unit += 1
        elif isinstance(sop, SequenceMap):
            for x in values[sop.first.label]:
                for y in values[sop.second.label]:  # unit = relu([first == x] + [second == y] - 1)
                    w_in[unit, r[_direction(sop.first, x)]] = 1.0
                    w_in[unit, r[_direction(sop.second, y)]] = 1.0
                    w_in[unit, r["one"]] = -1.0
                    w_out[r[_direction(sop, sop.fn(x, y))], unit] = 1.0
                    unit += 1
        elif isinstance(sop, SelectorWidth):
            unit = _decode_width(w_in, w_out, unit, sop, r, max_len)


def _decode_width(w_in, w_out, unit: int, sop: SOp, r: _Residual, max_len: int) -> int:
    """x = 1 / (w + 1) in the scratch direction -> one-hot w.

    Steps g_k = [w > k] = [x < t_k] = relu(a + 1) - relu(a), a = slope (t_k - x), thresholds t_k halfway
    between 1/(k+1) and 1/(k+2); then one-hot(w = k) = g_{k-1} - g_k (g_{-1} = 1, g_max = 0). The steps face
    left, so a unit is active only for widths above its threshold, where its activation stays below ~2:
    right-facing steps would be active, with activations in the hundreds, at every small width, and weight
    noise (densified fine-tuning) would multiply them.
    """
    scratch, one = r[f"{sop.label}:scratch"], r["one"]
    w_in[unit, one] = 1.0  # g_{-1} = 1: width 0 unless g_0 fires
    w_out[r[_direction(sop, 0)], unit] = 1.0
    unit += 1
    for k in range(max_len):
        threshold = (1.0 / (k + 1) + 1.0 / (k + 2)) / 2
        slope = 4.0 * (k + 1) * (k + 2)  # a is +-2 at the neighbouring widths
        c = 1.0 / math.sqrt(slope)  # relu(c z) / c = relu(z): balanced input and output weights
        for extra, sign in ((1.0, 1.0), (0.0, -1.0)):
            w_in[unit, scratch] = -c * slope
            w_in[unit, one] = c * (extra + slope * threshold)
            # g_k enters width k+1 with +1 and width k with -1
            w_out[r[_direction(sop, k + 1)], unit] += sign / c
            w_out[r[_direction(sop, k)], unit] -= sign / c
            unit += 1
    return unit


def densify(model: GPT, std: float, generator: torch.Generator) -> GPT:
    """Add N(0, std^2) to every weight (Jain et al. densify compiled weights before fine-tuning)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model


def agreement(compiled: CompiledProgram, sequences: Sequence[Sequence[Hashable]]) -> float:
    """Fraction of positions, where the evaluator's value is defined, on which the compiled model agrees with it."""
    from caplab.rasp import evaluate

    outputs = compiled.run(sequences)
    hits = total = 0
    for seq, got in zip(sequences, outputs):
        for want, value in zip(evaluate(compiled.program, seq), got):
            if want is not AMBIGUOUS:
                hits += want == value
                total += 1
    return hits / max(total, 1)
