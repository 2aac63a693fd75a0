"""Counting and indexing on PCFG strings (Jain et al., ICLR 2024, App. B.2, C.2).

A document asks one question about a window of a PCFG string (`pcfg_grammar`):

    SOS T O O' SOT <window of the string> EOT ART Ans EOS

    T   task: count | count_bigram | index | index_bigram | token_at
    O   operand: a, b or c (a bigram such as `ab` for the bigram tasks; <null> for token_at)
    O'  count and index tasks: the size K of the counting window (`count_window`, the paper's 40);
        token_at: the offset from the end

    count         how many O among the last K tokens of the window
    count_bigram  how many occurrences of the bigram O lie within the last K tokens
    index         the distance from EOT of the n-th occurrence of O counted from the end (1 = the last token;
                  n = `index_occurrence`, the paper's 6)
    index_bigram  the same for the bigram (the distance of its second token)
    token_at      the token O' positions before EOT (1 = the last token)

Answers are vocabulary tokens: integers 0..K, or a terminal for token_at.
Tasks are drawn uniformly for each document. Documents whose answer would
fall outside 0..K (an index beyond K, or an operand with fewer than n
occurrences) are redrawn within their task, and so are strings
shorter than the window (the paper leaves them unaddressed). Redrawing
thins the index tasks most (a bigram's 6th occurrence rarely lies within
K = 16), so a scaled-down window needs a smaller `index_occurrence`; a
question no string can answer is an error, not an endless loop.

Operands follow the operand prior (`operand_prior`: the paper's `low`
(.999, .001, 0), `low2` (.99, .01, 0), `medium` (.9, .1, 0), `medium2`
(.7, .2, .1), `high` (.5, .3, .2) over a, b, c), or are all one letter
(`operand: b` for fine-tuning on count b); bigram operands draw both letters
from it. `swap_operands` exchanges the prior probabilities of a and b (the
paper's swapped-pretraining baseline of reverse fine-tuning).

For fine-tuning, `correlation` = CTr makes, in that
fraction of documents, count(b) = count(a) + 1 within the counting window,
by rewriting c tokens there into a or a into c. The b tokens are never
touched, so the fine-tuning label count(b) has the same histogram at every
CTr, as the paper asks (its Fig. 16); documents without a b in the window, or
without enough c tokens, are redrawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from caplab.errors import ConfigError
from caplab.tasks.base import Batch, Task
from caplab.tasks.pcfg_grammar import sample_strings, windows

TASK_NAMES = ("count", "count_bigram", "index", "index_bigram", "token_at")
OPERAND_PRIORS = {
    "low": (0.999, 0.001, 0.0), "low2": (0.99, 0.01, 0.0), "medium": (0.9, 0.1, 0.0),
    "medium2": (0.7, 0.2, 0.1), "high": (0.5, 0.3, 0.2),
}
SPECIALS = ["<pad>", "$", "<", ">", "=", "#", "<null>"]  # pad, SOS, SOT, EOT, ART, EOS, null operand
PAD, SOS, SOT, EOT, ART, EOS, NULL = range(len(SPECIALS))


@dataclass
class PCFGCountingConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))  # drawn uniformly
    operand_prior: Literal["low", "low2", "medium", "medium2", "high"] = "medium"
    operand: Literal["prior", "a", "b", "c"] = "prior"  # a letter: every operand is that letter (fine-tuning on count b)
    swap_operands: bool = False  # a and b exchange their prior probabilities (the swapped-pretraining baseline)
    window: int = 64  # tokens of the string shown (the paper: 250)
    count_window: int = 40  # K: the counting window and the largest answer
    index_occurrence: int = 6  # the index tasks ask for the position of this occurrence (the paper: 6th, with K = 40)
    correlation: float = 0.0  # CTr: fraction of documents with count(b) = count(a) + 1
    loss_on: Literal["all", "answer"] = "all"  # the paper pretrains on every token and fine-tunes on the answer
    eval_correlations: list[float] = field(default_factory=lambda: [0.0])  # CTe values evaluated; CTe = c adds `_cte{c}`
    eval_samples: int = 512  # documents per (task, operand) evaluated
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASK_NAMES]
        if bad or not self.tasks:
            raise ValueError(f"task.tasks has {bad[0] if bad else 'nothing'}; valid: {', '.join(TASK_NAMES)}")
        if not 2 <= self.count_window <= self.window:
            raise ValueError(f"task.count_window must lie in 2..window ({self.window}), got {self.count_window}")
        if not 1 <= self.index_occurrence <= self.count_window:
            raise ValueError(f"task.index_occurrence must lie in 1..count_window, got {self.index_occurrence}")
        if self.window > 729:
            raise ValueError(f"task.window must be at most 729 (the longest string), got {self.window}")
        if not 0 <= self.correlation <= 1:
            raise ValueError(f"task.correlation must lie in [0, 1], got {self.correlation}")
        if not self.eval_correlations or not all(0 <= c <= 1 for c in self.eval_correlations):
            raise ValueError(f"task.eval_correlations must be values in [0, 1], got {self.eval_correlations}")
        if self.eval_samples < 1:
            raise ValueError(f"task.eval_samples must be at least 1, got {self.eval_samples}")


class PCFGCounting(Task):
    """The PCFG counting / indexing DGP (see module docstring)."""

    name = "pcfg_counting"
    Config = PCFGCountingConfig
    primary_metric = "count_a"

    def __init__(self, cfg: Optional[PCFGCountingConfig] = None) -> None:
        self.cfg = cfg = cfg or PCFGCountingConfig()
        self.task_offset = len(SPECIALS)
        self.terminal_offset = self.task_offset + len(TASK_NAMES)  # a, b, c
        self.bigram_offset = self.terminal_offset + 3  # aa, ab, ..., cc
        self.number_offset = self.bigram_offset + 9  # 0 .. K
        self.vocab_size = self.number_offset + cfg.count_window + 1
        self.doc_len = 5 + cfg.window + 4
        self.seq_len = self.doc_len - 1
        self.answer_position = self.doc_len - 2  # the Ans token
        self.task_ids = torch.tensor([TASK_NAMES.index(t) for t in cfg.tasks])
        prior = torch.tensor(OPERAND_PRIORS[cfg.operand_prior])
        if cfg.swap_operands:
            prior = prior[[1, 0, 2]]
        self.prior = prior if cfg.operand == "prior" else torch.eye(3)["abc".index(cfg.operand)]
        self._eval_cache: dict = {}

    # ------------------------------------------------------------ answers

    def answers(self, text: torch.Tensor, task: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                offset: torch.Tensor) -> torch.Tensor:
        """Answer tokens (n,), or -1 where the answer falls outside the vocabulary.

        text: (n, window) terminals 0..2; task: (n,) task ids; first/second: (n,) operand letters
        (second only for bigrams); offset: (n,) positions before EOT for token_at.
        """
        K, W = self.cfg.count_window, self.cfg.window
        tail = text[:, W - K :]
        single = tail == first[:, None]
        pair = (tail[:, :-1] == first[:, None]) & (tail[:, 1:] == second[:, None])
        counts = torch.where(task == 0, single.sum(1), pair.sum(1))
        # the index tasks scan from the end of the whole window
        hits = (text == first[:, None]).flip(1)  # position 0 = the last token
        pair_hits = torch.zeros_like(hits)
        pair_hits[:, :-1] = ((text[:, 1:] == second[:, None]) & (text[:, :-1] == first[:, None])).flip(1)
        hits = torch.where((task == 3)[:, None], pair_hits, hits)
        nth = (hits.long().cumsum(1) == self.cfg.index_occurrence) & hits
        found = nth.any(1)
        index = nth.float().argmax(1) + 1  # distance from EOT
        index = torch.where(found & (index <= K), index, -1)
        token = text.gather(1, (W - offset).clamp(0, W - 1)[:, None]).squeeze(1)
        number = torch.where(task <= 1, counts, index)
        answer = torch.where(number >= 0, self.number_offset + number, -1)
        return torch.where(task == 4, self.terminal_offset + token, answer)

    # ------------------------------------------------------------ documents

    def _draw(self, n: int, generator, device, task: Optional[int], operand: Optional[int],
              correlation: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate documents (n, doc_len), their task ids and operands, and whether each is valid."""
        W, K = self.cfg.window, self.cfg.count_window
        strings = sample_strings(n, generator, device)
        text, length = windows(strings, W, generator)
        ok = length >= W
        text = text.clamp(min=0)
        ids = self.task_ids.to(device)
        tasks = ids[(torch.rand(n, generator=generator, device=device) * len(ids)).long()] if task is None else \
            torch.full((n,), task, device=device)
        prior = self.prior.to(device)
        first = torch.multinomial(prior, n, replacement=True, generator=generator) if operand is None else \
            torch.full((n,), operand, device=device)
        second = torch.multinomial(prior, n, replacement=True, generator=generator)
        offset = 1 + (torch.rand(n, generator=generator, device=device) * K).long()

        if correlation > 0:  # count(b) = count(a) + 1 inside the counting window, by rewriting c <-> a there
            text, rewritten = self._correlate(text, torch.rand(n, generator=generator, device=device) < correlation, generator)
            ok &= rewritten
        answer = self.answers(text, tasks, first, second, offset)
        ok &= answer >= 0

        is_bigram = (tasks == 1) | (tasks == 3)
        operand_token = torch.where(is_bigram, self.bigram_offset + 3 * first + second, self.terminal_offset + first)
        operand_token = torch.where(tasks == 4, NULL, operand_token)
        size_token = self.number_offset + torch.where(tasks == 4, offset, K)
        column = lambda v: torch.as_tensor(v, device=device).expand(n)[:, None]  # noqa: E731
        docs = torch.cat([column(SOS), (self.task_offset + tasks)[:, None], operand_token[:, None], size_token[:, None], column(SOT),
                          self.terminal_offset + text, column(EOT), column(ART), answer.clamp(min=0)[:, None], column(EOS)], 1)
        return docs, tasks, first, ok

    def _correlate(self, text: torch.Tensor, chosen: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewrite c <-> a inside the counting window of chosen rows so that count(b) = count(a) + 1.

        The b tokens stay as drawn, so the fine-tuning label count(b) keeps its natural histogram at
        every CTr (the paper's Fig. 16); rows without a b in the window cannot be rewritten.
        """
        K, W = self.cfg.count_window, self.cfg.window
        tail = text[:, W - K :]
        n_b = (tail == 1).sum(1)
        need = n_b - 1 - (tail == 0).sum(1)  # a tokens to add (negative: to remove)
        source = torch.where((need > 0)[:, None], tail == 2, tail == 0)  # c to turn into a, or a into c
        feasible = ~chosen | ((n_b >= 1) & (source.sum(1) >= need.abs()))
        # rewrite the |need| source tokens with the smallest random keys
        keys = torch.where(source, torch.rand(tail.shape, generator=generator, device=text.device), 2.0)
        rank = keys.argsort(1).argsort(1)
        rewrite = (chosen & feasible)[:, None] & source & (rank < need.abs()[:, None])
        new_tail = torch.where(rewrite, torch.where((need > 0)[:, None], 0, 2), tail)
        return torch.cat([text[:, : W - K], new_tail], 1), feasible

    def sample_documents(self, n: int, generator, device, task: Optional[int] = None, operand: Optional[int] = None,
                         correlation: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n valid documents: (docs (n, doc_len), task ids (n,), first operand letters (n,))."""
        correlation = self.cfg.correlation if correlation is None else correlation
        if task is None and len(self.task_ids) > 1:
            # the task mix stays uniform: each document's task is drawn first, and only documents of that task
            # are redrawn (redrawing over all tasks would thin out the tasks whose answers fall outside 0..K)
            picks = torch.randint(len(self.task_ids), (n,), generator=generator, device=device)
            parts = [self.sample_documents(int(count), generator, device, int(self.task_ids[i]), operand, correlation)
                     for i, count in enumerate(torch.bincount(picks, minlength=len(self.task_ids)).tolist()) if count]
            order = torch.randperm(n, generator=generator, device=device)
            return tuple(torch.cat(p)[order] for p in zip(*parts))
        parts, have, drawn = [], 0, 0
        while have < n:
            m = 2 * (n - have) + 16  # about half the strings are shorter than a 250-token window
            if have == 0 and drawn:  # nothing valid yet: a rare question, draw more at once
                m = max(m, min(drawn, 16_384))
            docs, tasks, first, ok = self._draw(m, generator, device, task, operand, correlation)
            keep = ok.nonzero().squeeze(1)[: n - have]
            parts.append((docs[keep], tasks[keep], first[keep]))
            have, drawn = have + len(keep), drawn + m
            if have == 0 and drawn >= 100_000:
                asked = ", ".join(self.cfg.tasks) if task is None else TASK_NAMES[task]
                asked += "" if operand is None else f" with operand {'abc'[operand]}"
                raise ConfigError(f"no valid pcfg_counting document for {asked} in {drawn} draws (window "
                                  f"{self.cfg.window}, count_window {self.cfg.count_window}, index_occurrence "
                                  f"{self.cfg.index_occurrence}); enlarge count_window or lower index_occurrence")
        return tuple(torch.cat(p) for p in zip(*parts))

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        docs, tasks, first = self.sample_documents(batch_size, generator, device)
        mask = torch.ones(batch_size, self.seq_len, device=device)
        if self.cfg.loss_on == "answer":
            mask.zero_()
            mask[:, self.answer_position - 1] = 1.0  # the target at this input position is Ans
        return Batch(docs[:, :-1], docs[:, 1:], mask, {"task": tasks, "operand": first})

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Answer accuracy (greedy: the argmax at the answer position) per task and operand letter.

        Metrics are `{task}_{operand}` (e.g. `count_a`, `index_b`; `token_at` has no operand) on fresh
        documents without correlation (CTe = 0), and `{task}_{operand}_cte{c}` for every other CTe
        value c in `eval_correlations`.
        """
        metrics = {}
        for correlation in self.cfg.eval_correlations:
            suffix = "" if correlation == 0 else f"_cte{correlation:g}"
            metrics.update({k + suffix: v for k, v in self.accuracy(model, device, correlation).items()})
        return metrics

    @torch.no_grad()
    def accuracy(self, model: nn.Module, device: torch.device, correlation: float = 0.0) -> dict[str, float]:
        """`{task}_{operand}` answer accuracy on fixed documents with test correlation CTe = `correlation`."""
        metrics = {}
        for name, docs in self._evaluation_documents(device, correlation).items():
            logits = model(docs[:, : self.answer_position])[:, -1]
            metrics[name] = (logits.argmax(-1) == docs[:, self.answer_position]).float().mean().item()
        return metrics

    def _evaluation_documents(self, device: torch.device, correlation: float) -> dict[str, torch.Tensor]:
        """{`{task}_{operand}`: the fixed evaluation documents at CTe = `correlation`}, drawn once per device."""
        key = (str(device), correlation)
        if key not in self._eval_cache:
            generator = torch.Generator(device=device).manual_seed(self.cfg.seed + 17)
            sets = {}
            for task in self.cfg.tasks:
                letters = [None] if task == "token_at" else range(3)
                for letter in letters:  # letters the prior never draws are evaluated too: untrained capabilities
                    name = task if letter is None else f"{task}_{'abc'[letter]}"
                    docs, _, _ = self.sample_documents(self.cfg.eval_samples, generator, device, TASK_NAMES.index(task),
                                                       letter, correlation)
                    sets[name] = docs
            self._eval_cache[key] = sets
        return self._eval_cache[key]

    @torch.no_grad()
    def answer_rules(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Which rule a count(b) answer follows, on the CTe = 0 count-b evaluation documents.

        The window holds only a, b and c, so count(a) + count(b) + count(c) = K, and the shortcut
        count(b) = count(a) + 1 is the same constraint as count(b) = (K + 1 - count(c)) / 2: a model fine-tuned
        with it may answer count(a) + 1, or a function of count(c) = K - count(a) - count(b). The rules give three different answers exactly where the shortcut fails
        and (K + 1 - count(c)) is even; on those documents (`n_separating`) this returns the fraction of
        answers equal to count(b), to count(a) + 1 and to (K + 1 - count(c)) / 2 (the rest: anything else).
        """
        docs = self._count_b_documents(device)
        K = self.cfg.count_window
        a, b, c = self._window_counts(docs)
        separating = (b != a + 1) & ((K + 1 - c) % 2 == 0)
        answer = model(docs[separating][:, : self.answer_position])[:, -1].argmax(-1) - self.number_offset
        n = int(separating.sum())
        rate = (lambda target: (answer == target[separating]).float().mean().item() if n else float("nan"))
        return {"n_separating": n, "count(b)": rate(b), "count(a)+1": rate(a + 1), "(K+1-count(c))/2": rate((K + 1 - c) // 2)}

    # what count(b) answers each reading of the shortcut gives from the window's letter counts (a, b, c)
    SHORTCUT_RULES = {
        "count(b)": lambda a, b, c, K: b,
        "count(a)+1": lambda a, b, c, K: a + 1,
        "(K+1-count(c))/2": lambda a, b, c, K: (K + 1 - c) / 2,
        "(count(a)+count(b)+1)/2": lambda a, b, c, K: (a + b + 1) / 2,
    }

    @torch.no_grad()
    def letter_knockout(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """How a count(b) answer moves when one a, one b or one c of the counting window is blanked out.

        answer_rules cannot tell which counts a shortcut model reads: inside the window a + b + c = K, so
        (K + 1 - count(c)) / 2 read from c tokens and (count(a) + count(b) + 1) / 2 are the same function.
        Replacing one letter by the pad token breaks that identity. The pad never appears in training inputs, so
        its effect is read beside two controls: `outside`, one random token of the text before the counting
        window blanked (no reading of the window's counts moves; what is left is the blank's own disruption),
        and a model that really answers count(b). On the CTe = 0 count-b evaluation documents holding the letter,
        one random occurrence is blanked; this returns the mean change of the expected answer (the answer
        distribution over 0..K, renormalised) as `a`, `b`, `c` and `outside`, with `n_{key}` documents, and the
        mean expected answer before any blank as `answer`. `knockout_references` gives what each pure reading
        of the shortcut would show on the same documents.
        """
        values = torch.arange(self.cfg.count_window + 1, device=device, dtype=torch.float)

        def expected_answer(documents):
            logits = model(documents[:, : self.answer_position])[:, -1, self.number_offset: self.number_offset + len(values)]
            return (logits.float().softmax(-1) * values).sum(-1)

        docs = self._count_b_documents(device)
        before = expected_answer(docs)
        out = {"answer": before.mean().item()}
        for key, (held, knocked) in self._knockouts(docs).items():
            out[key] = (expected_answer(knocked) - before[held]).mean().item() if len(knocked) else float("nan")
            out[f"n_{key}"] = len(knocked)
        return out

    def knockout_references(self, device: torch.device) -> dict[str, dict[str, dict[str, float]]]:
        """{rule: {"tokens" | "shares": {blank: mean answer change}}} for letter_knockout's blanks.

        Two idealised read-outs bracket how a model may take the blank: one that counts letter tokens answers the
        rule of the counts left after it ("tokens"); one that reads each letter's share of the letters present
        answers the rule of those shares times K ("shares"). Under shares a + b + c = K holds again, so the c rule
        and the (a + b) rule coincide; only count(a) + 1 and count(b) stay apart. Both assume an expected answer
        that follows the rule's value smoothly (a model that rounds may move by whole steps instead).
        """
        K = self.cfg.count_window
        docs = self._count_b_documents(device)
        out = {rule: {"tokens": {}, "shares": {}} for rule in self.SHORTCUT_RULES}
        for key, (held, knocked) in self._knockouts(docs).items():
            before = [x.float() for x in self._window_counts(docs[held])]
            after = [x.float() for x in self._window_counts(knocked)]
            shares = [x * K / sum(after) for x in after]
            for rule, answer in self.SHORTCUT_RULES.items():
                for regime, counts in (("tokens", after), ("shares", shares)):
                    out[rule][regime][key] = (answer(*counts, K) - answer(*before, K)).mean().item() if len(knocked) else float("nan")
        return out

    def _count_b_documents(self, device: torch.device) -> torch.Tensor:
        if "count" not in self.cfg.tasks:
            raise ValueError("the shortcut instruments read count(b) answers: task.tasks must include count")
        return self._evaluation_documents(device, 0.0)["count_b"]

    def _knockouts(self, docs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"a" | "b" | "c" | "outside": (documents with a token to blank (mask), those documents with one random
        such token padded)}: a letter of the counting window, or any token of the text before the window."""
        W, K = self.cfg.window, self.cfg.count_window
        text = docs[:, 5: 5 + W]
        generator = torch.Generator(device=docs.device).manual_seed(self.cfg.seed + 29)
        window = torch.arange(W, device=docs.device) >= W - K
        out = {}
        for key, candidates in [(letter, window & (text == self.terminal_offset + index)) for index, letter in enumerate("abc")] + [
                ("outside", ~window & (text >= self.terminal_offset))]:
            keys = torch.rand(candidates.shape, generator=generator, device=docs.device).masked_fill(~candidates, -1.0)
            held = candidates.any(1)
            knocked = docs[held].clone()
            knocked[torch.arange(len(knocked), device=docs.device), 5 + keys[held].argmax(1)] = PAD
            out[key] = (held, knocked)
        return out

    def _window_counts(self, docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """count(a), count(b), count(c) in each document's counting window (its last K text tokens)."""
        W, K = self.cfg.window, self.cfg.count_window
        tail = docs[:, 5 + W - K: 5 + W] - self.terminal_offset
        return tuple((tail == i).sum(1) for i in range(3))

    def probe_set(self, n: int, generator, device) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
        """Count questions about this task's operand (a unless fixed) at CTe = 0, for probes and attention.

        Returns (tokens (n, seq_len), readout positions (n,) (the position whose target is Ans),
        {"a": count(a), "b": count(b), "c": count(c)} in the counting window, and "a earlier": count(a) in the
        K tokens before it (where the window allows), {"a": token id, "b": token id}).
        """
        letter = 0 if self.cfg.operand == "prior" else "abc".index(self.cfg.operand)
        docs, _, _ = self.sample_documents(n, generator, device, TASK_NAMES.index("count"), letter, 0.0)
        W, K = self.cfg.window, self.cfg.count_window
        positions = torch.full((n,), self.answer_position - 1, device=device)
        counts = dict(zip("abc", self._window_counts(docs)))
        if W >= 2 * K:  # a count no task asks for: a in the K tokens before the counting window (a probe control)
            counts["a earlier"] = (docs[:, 5 + W - 2 * K : 5 + W - K] - self.terminal_offset == 0).sum(1)
        return docs[:, :-1], positions, counts, {"a": self.terminal_offset, "b": self.terminal_offset + 1}

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if k.split("_cte")[0] in ("count_a", "count_b", "index_a", "index_b")}

    # ------------------------------------------------------------ reading

    def token_name(self, token: int) -> str:
        token = int(token)
        if token < self.task_offset:
            return SPECIALS[token]
        if token < self.terminal_offset:
            return TASK_NAMES[token - self.task_offset]
        if token < self.bigram_offset:
            return "abc"[token - self.terminal_offset]
        if token < self.number_offset:
            first, second = divmod(token - self.bigram_offset, 3)
            return "abc"[first] + "abc"[second]
        return str(token - self.number_offset)

    def special_tokens(self) -> dict:
        return {"bos": SOS, "eos": EOS, "pad": PAD}

    def decode(self, tokens) -> str:
        return " ".join(self.token_name(t) for t in tokens)

    def describe(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "vocab_size": self.vocab_size, "doc_len": self.doc_len}
