"""Greedy decoding with the least work an answer needs (the path every greedy `LocalModel.complete` takes).

transformers' `generate()` runs one forward per generated token and, with `stop_strings`, rebuilds a
table over the whole vocabulary on every call (2-7 s for Gemma's 262k tokens: most of a one-label
answer's time). Here, per batch:

1. **one prefill** of the left-padded prompts, logits at the last position only (`logits_to_keep=1`);
2. **rounds**: each unfinished row commits its greedy choice, then every token its grammar *forces*
   (a grammar state that allows exactly one token needs no forward to choose it: "jump-forward",
   as SGLang and xgrammar call it); the next forward feeds all of a row's committed tokens at once, with
   logits only at those positions. A label set whose labels differ in their first token is answered by
   the prefill and one forward over the forced rest; a grammar-renormalised confidence needs not even that.
3. a finished row leaves the batch (its KV cache rows are dropped) and its result is final at once.

Sampled completions (the teacher writing new inputs, self-consistency samples) take the same loop with a
`sample` callable in place of the argmax: rows that stop early leave the batch instead of riding along to the
longest row's end as in `generate()`.

A **shared prompt prefix** (the skill's instruction and label list, the same in every request) need not be
computed again per request: `prefix_kv` computes its keys and values once per adapter, `PrefixCache` keeps
them, and `greedy_batch(prefix=...)` starts from a copy and prefills only each row's own suffix (prefix
caching, as vLLM's automatic prefix caching and SGLang's RadixAttention do on GPUs). The positions and the
attention the suffix sees are those of the whole prompt, so the answers are the same up to float rounding.

Greedy choices and log-probabilities are those `generate()` computes (the same float32 logits, argmax
under the same xgrammar mask), so the answers and confidences the gates measured are the ones served
(tests/teachers/test_greedy.py compares the two paths token for token).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Row:
    """One prompt's decode. `ids`: generated token ids (an EOS that ended it included); `lps`: the model's own
    log-probability of each generated token (None where not computed: an EOS, or `own=False`); `glps`: the same
    renormalised over the tokens the grammar allowed (equal to the model's own when decoding is free)."""

    ids: list[int] = field(default_factory=list)
    lps: list[float | None] = field(default_factory=list)
    glps: list[float] = field(default_factory=list)
    # Per generated token: the log-probability margin of the greedy choice over the runner-up among the tokens the
    # grammar allowed (top-1 minus top-2, the classic margin confidence: Scheffer et al. 2001); None where the
    # token was forced (no runner-up) or is an EOS.
    margins: list[float | None] = field(default_factory=list)
    finish: str | None = None  # "stop" (EOS, newline, grammar complete) or "length"
    pending: list[int] = field(default_factory=list)  # committed tokens not yet fed to the model (choice + forced)
    pstart: int = 0  # index in `ids` of pending[0]
    draft: list[int] = field(default_factory=list)  # the grammar's forced remainder, tokenized: fed after pending,
    # each token kept only if it is the greedy choice at its position (verified jump-forward)


def _single_allowed(bitmask_row) -> int | None:
    """The token id when exactly one bit of an xgrammar bitmask row (int32 words, bit j of word w = token
    32*w + j) is set, else None."""
    import torch

    nz = torch.nonzero(bitmask_row, as_tuple=False)
    if nz.numel() != 1:
        return None
    w = int(nz[0, 0])
    word = int(bitmask_row[w]) & 0xFFFFFFFF
    if word & (word - 1):  # more than one bit in that word
        return None
    return 32 * w + word.bit_length() - 1


def greedy_batch(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                 matchers: Sequence | None = None, bitmask_vocab: int | None = None,
                 stop_at_newline: bool = True, own: bool = True, device=None,
                 adapter_names: Sequence[str] | None = None,
                 prefix: tuple[int, Sequence[tuple]] | None = None, draft: bool = True,
                 sample=None) -> list[Row]:
    """Greedy-decode a batch of tokenized prompts; returns one Row per prompt, in order.

    model: a causal LM (PEFT-wrapped or not) whose forward takes `past_key_values`, `position_ids`,
    `logits_to_keep`. matchers: one xgrammar GrammarMatcher per row (fresh), or None for free decoding;
    bitmask_vocab: the logits width the grammar's bitmask covers. stop_at_newline: a token whose text holds a
    newline ends the row (the answer is the text before it). own: compute the model's own log-probability of
    the tokens a grammar forced (one forward over them); with False only renormalised ones are exact (a
    forced token's is 0) and forced tokens' `lps` are None. max_new_tokens: one cap for all rows, or one per row.
    adapter_names: one PEFT adapter name per row ("__base__" for none): rows of different adapters share every
    forward (PEFT's mixed-batch inference), so skills on one base are not decoded one after another.
    prefix: (P, kv) where every prompt's first P ids are the same and kv holds, per layer, the (keys, values) of
    those P tokens for each row ([n, kv_heads, P, head_dim], `PrefixCache.batch`): only ids P.. are prefilled.
    draft: feed the tokenization of what the grammar fixes as a string after a choice, each token kept where it is
    the greedy choice (fewer forwards; the same answer and scores). sample: None for greedy (argmax), or a callable
    taking the step's float32 logits [rows, vocab] (tokens the grammar forbids at -inf) and returning one token
    id per row (a LongTensor [rows]): sampled decoding through the same loop (no drafts then: a draft is verified
    against the greedy choice). Raises ValueError on an empty prompt, a
    prefix not shorter than every prompt, or lists whose length is not the prompts'."""
    import torch
    from transformers import DynamicCache

    device = device or next(model.parameters()).device
    n = len(prompt_ids)
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("greedy_batch: an empty prompt (no tokens) cannot be decoded")
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [Row() for _ in range(n)]
    if n == 0:
        return rows
    caps = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(caps) != n or (adapter_names is not None and len(adapter_names) != n):
        raise ValueError(f"greedy_batch: {n} prompts, {len(caps)} caps, "
                         f"{'no' if adapter_names is None else len(adapter_names)} adapter names")

    def extra(active_rows):  # forward kwargs for the rows in the batch, in batch order
        return {} if adapter_names is None else {"adapter_names": [adapter_names[r] for r in active_rows]}

    xgr = None
    bitmask = None
    if matchers is not None:
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(n, bitmask_vocab)

    cache = DynamicCache(config=getattr(model, "config", None))
    plen = 0
    if prefix is not None:
        plen, kv = prefix
        if any(len(p) <= plen for p in prompt_ids):
            raise ValueError(f"greedy_batch: a prefix of {plen} tokens leaves a prompt with nothing to prefill")
        for li, (k, v) in enumerate(kv):
            cache.update(k, v, li)
    # Each row's suffix, left-padded; with a prefix the padding sits between it and the suffix (masked out).
    width = max(len(p) for p in prompt_ids) - plen
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompt_ids):
        m = len(p) - plen
        ids[r, width - m:] = torch.tensor(list(p[plen:]))
        mask[r, width - m:] = 1
    pos = plen + (mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((n, plen), dtype=torch.long), mask], dim=1)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                past_key_values=cache, use_cache=True, logits_to_keep=1, **extra(range(n)))
    scores = out.logits[:, -1, :].float()  # [active, vocab]: each active row's next-token logits
    active = list(range(n))  # batch row -> prompt index
    next_pos = [len(p) for p in prompt_ids]  # each prompt's next position id

    def text_has_newline(r: int) -> bool:
        return "\n" in tokenizer.decode(rows[r].ids, skip_special_tokens=True)

    def finish_check(r: int) -> bool:
        row = rows[r]
        if row.ids and row.ids[-1] in eos_ids:
            row.finish = "stop"
        elif stop_at_newline and text_has_newline(r):
            row.finish = "stop"
        elif matchers is not None and matchers[r].is_terminated():
            row.finish = "stop"
        elif len(row.ids) >= caps[r]:
            row.finish = "length"
        return row.finish is not None

    while active:
        # 1. Choose: each active row that has next-token logits picks its greedy token.
        s = scores
        lse = torch.logsumexp(s, dim=-1)
        masked = s
        if matchers is not None:
            for b, r in enumerate(active):
                matchers[r].fill_next_token_bitmask(bitmask, b)
            masked = s.clone()
            xgr.apply_token_bitmask_inplace(masked, bitmask[: len(active)].to(masked.device))
        top2 = masked.topk(2, dim=-1).values
        best = masked.argmax(dim=-1) if sample is None else sample(masked)
        own_lp = (s.gather(-1, best[:, None])[:, 0] - lse).tolist()
        g_lp = (masked.gather(-1, best[:, None])[:, 0] - torch.logsumexp(masked, dim=-1)).tolist()
        margin = (top2[:, 0] - top2[:, 1]).tolist()  # a difference of logits is a difference of log-probabilities
        best = best.tolist()
        for b, r in enumerate(active):
            row = rows[r]
            t = best[b]
            row.pstart = len(row.ids)
            row.ids.append(t)
            row.lps.append(own_lp[b])
            row.glps.append(g_lp[b])
            row.margins.append(margin[b] if margin[b] != float("inf") else None)
            row.pending = [t]
            if matchers is not None and t not in eos_ids:
                matchers[r].accept_token(t)
            if finish_check(r):
                continue
            # 2. Jump forward over the tokens the grammar forces.
            while matchers is not None:
                matchers[r].fill_next_token_bitmask(bitmask, 0)
                f = _single_allowed(bitmask[0])
                if f is None:
                    break
                row.ids.append(f)
                row.glps.append(0.0)  # renormalised over one allowed token: log 1
                row.margins.append(None)
                if f in eos_ids:
                    row.lps.append(None)  # an EOS is not part of the answer: never scored
                    row.finish = "stop"
                    break
                matchers[r].accept_token(f)
                row.lps.append(None)
                row.pending.append(f)
                if finish_check(r):
                    break
            # 2b. Draft the rest the grammar fixes as a string but not as tokens (" feature" -> "_request": several
            #     tokenizations are allowed, so no single token is forced): its own tokenization is fed in the same
            #     forward and each token kept only where it is the greedy choice, as speculative decoding verifies
            #     a draft. The answer and its scores are the step-by-step ones; the forwards are fewer.
            if draft and sample is None and matchers is not None and row.finish is None:
                rest = matchers[r].find_jump_forward_string()
                if rest:
                    row.draft = tokenizer.encode(rest, add_special_tokens=False)[: max(0, caps[r] - len(row.ids))]
        # 3. Which rows need a forward: unfinished ones (their next choice), and finished ones whose forced
        #    tokens still lack the model's own log-probability.
        feed: list[tuple[int, int, list[int], bool]] = []  # (batch row, prompt, tokens to feed, wants next logits)
        for b, r in enumerate(active):
            row = rows[r]
            if row.finish is None:
                feed.append((b, r, row.pending + row.draft, True))
            elif own and len(row.pending) > 1:
                # Done: the forced tokens after its choice still need their own log-probability, read at the
                # positions before them (the last committed token's logits are not needed).
                feed.append((b, r, row.pending[:-1], False))
        if not feed:
            break
        keep_b = [b for b, _, _, _ in feed]
        if len(keep_b) != len(active):
            cache.batch_select_indices(torch.tensor(keep_b, dtype=torch.long, device=device))
            mask = mask[keep_b]
        active = [r for _, r, _, _ in feed]
        c = max(len(t) for _, _, t, _ in feed)
        step_ids = torch.full((len(feed), c), pad, dtype=torch.long)
        step_mask = torch.zeros((len(feed), c), dtype=torch.long)
        step_pos = torch.zeros((len(feed), c), dtype=torch.long)
        for k, (_, r, toks, _) in enumerate(feed):
            m = len(toks)
            # Left-padded within the step: each row's last fed token sits in the last column.
            step_ids[k, c - m:] = torch.tensor(toks)
            step_mask[k, c - m:] = 1
            step_pos[k, c - m:] = torch.arange(next_pos[r], next_pos[r] + m)
            next_pos[r] += m
        mask = torch.cat([mask, step_mask], dim=1)
        out = model(input_ids=step_ids.to(device), attention_mask=mask.to(device), position_ids=step_pos.to(device),
                    past_key_values=cache, use_cache=True, logits_to_keep=c, **extra(active))
        logits = out.logits.float()  # [rows, c, vocab]
        if own:
            # Own log-probabilities of forced tokens: pending[j] is predicted at the column of pending[j - 1].
            for k, (_, r, toks, _) in enumerate(feed):
                row = rows[r]
                for j in range(1, len(row.pending)):
                    v = logits[k, c - len(toks) + j - 1]
                    row.lps[row.pstart + j] = float(v[row.pending[j]] - torch.logsumexp(v, -1))
        # Verify drafts: the column of a row's next-token logits is its last fed token's unless a draft token was
        # refused (then the column before it; the refused tokens' cache entries are masked out).
        col = [c - 1] * len(feed)
        for k, (_, r, toks, _) in enumerate(feed):
            row = rows[r]
            if not row.draft:
                continue
            first = c - len(toks) + len(row.pending) - 1  # predicts draft[0]
            took = 0
            for j, d in enumerate(row.draft):
                v = logits[k, first + j]
                matchers[r].fill_next_token_bitmask(bitmask, 0)
                masked = v[None].clone()
                xgr.apply_token_bitmask_inplace(masked, bitmask[:1].to(masked.device))
                masked = masked[0]
                if int(masked.argmax()) != d:
                    break
                top2 = masked.topk(2).values
                forced = float(top2[1]) == float("-inf")  # the only token allowed: recorded as a jumped one
                row.ids.append(d)
                row.lps.append(None if forced and not own else float(v[d] - torch.logsumexp(v, -1)))
                row.glps.append(0.0 if forced else float(masked[d] - torch.logsumexp(masked, -1)))
                row.margins.append(None if forced else float(top2[0] - top2[1]))
                took += 1
                if d not in eos_ids:
                    matchers[r].accept_token(d)
                if finish_check(r):
                    break
            refused = len(row.draft) - took
            if refused:
                mask[k, mask.shape[1] - refused:] = 0  # the draft's last `refused` columns are this row's own
                next_pos[r] -= refused
            col[k] = first + took
            row.draft = []
        keep = [k for k, (_, r, _, nxt) in enumerate(feed) if nxt and rows[r].finish is None]
        if not keep:
            break
        if len(keep) != len(feed):
            cache.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=device))
            mask = mask[keep]
            active = [active[k] for k in keep]
        scores = logits[keep, [col[k] for k in keep], :]
    return rows


def prefix_kv(model, ids: Sequence[int], device=None) -> list[tuple]:
    """The keys and values of prompt prefix `ids` (one forward, batch 1, under whatever adapter is active):
    per layer (keys, values), each [1, kv_heads, len(ids), head_dim]. For `greedy_batch(prefix=...)`."""
    import torch
    from transformers import DynamicCache

    device = device or next(model.parameters()).device
    cache = DynamicCache(config=getattr(model, "config", None))
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    model(input_ids=x, attention_mask=torch.ones_like(x), position_ids=torch.arange(len(ids), device=device)[None],
          past_key_values=cache, use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """The length of the longest common prefix of token-id sequences (0 for none)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


class PrefixCache:
    """Keys and values of prompt prefixes, per adapter, least recently used dropped past `capacity` entries.

    `plan(adapter_of_rows, prompt_ids)` picks the prefix a chunk shares: the longest kept prefix every row starts
    with, else the common prefix of the chunk's rows and the adapter's last `history` prompts (so a request
    decoded alone shares the instruction with the ones before it, and two requests that happen to open with the
    same word do not make that word part of a kept prefix); at least `min_tokens`, always at least one token short
    of the shortest prompt, and never longer than `max_tokens` (a bound on what an entry holds; prompts that
    reach a sliding attention window are kept out by the caller, LocalModel). Not thread-safe: the model's lock
    guards it."""

    def __init__(self, capacity: int = 32, min_tokens: int = 8, max_tokens: int = 256, history: int = 4):
        self.capacity, self.min_tokens, self.max_tokens, self.history = capacity, min_tokens, max_tokens, history
        self.entries: "OrderedDict[tuple, list[tuple]]" = OrderedDict()  # (adapter, ids) -> per-layer (k, v)
        self.last: dict = {}  # adapter -> deque of its last prompts' ids
        self.hits = self.misses = 0

    def drop(self, adapter) -> None:
        """Forget every prefix of `adapter` (its weights changed or it was unloaded)."""
        for key in [k for k in self.entries if k[0] == adapter]:
            del self.entries[key]
        self.last.pop(adapter, None)

    def plan(self, adapters: Sequence, prompt_ids: Sequence[Sequence[int]]) -> int:
        """How many leading tokens the chunk's rows (adapters[i] decodes prompt_ids[i]) take from the cache: 0 for
        none. Remembers each adapter's last prompt."""
        cap = min(self.max_tokens, min(len(p) for p in prompt_ids) - 1)
        chunk = set(adapters)
        best = 0
        for (a, ids) in self.entries:  # a kept prefix every row starts with
            if a in chunk and best < len(ids) <= cap and all(tuple(p[: len(ids)]) == ids for p in prompt_ids):
                best = len(ids)
        if best < self.min_tokens:
            seqs = list(prompt_ids) + [p for a in chunk for p in self.last.get(a, ())]
            # One prompt alone shares nothing yet: its whole length is no prefix worth keeping.
            best = min(common_prefix(seqs), cap) if len(seqs) > 1 else 0
        for a, p in zip(adapters, prompt_ids):
            self.last.setdefault(a, deque(maxlen=self.history)).append(tuple(p))
        return best if best >= self.min_tokens else 0

    def batch(self, adapters: Sequence, prompt_ids: Sequence[Sequence[int]], plen: int, compute) -> tuple[int, list]:
        """`greedy_batch`'s prefix argument for a chunk: (plen, per-layer (keys, values) with one row per prompt).
        compute(adapter, ids) -> per-layer (k, v) of batch 1 (`prefix_kv` under that adapter), called on a miss."""
        import torch

        ids = tuple(prompt_ids[0][:plen])
        per: dict = {}
        for a in dict.fromkeys(adapters):
            key = (a, ids)
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                self.entries[key] = compute(a, ids)
                while len(self.entries) > self.capacity:
                    self.entries.popitem(last=False)
            per[a] = self.entries[key]
        if len(per) == 1:
            kv = next(iter(per.values()))
            n = len(adapters)
            return plen, [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv]
        layers = len(next(iter(per.values())))
        return plen, [(torch.cat([per[a][li][0] for a in adapters]), torch.cat([per[a][li][1] for a in adapters]))
                      for li in range(layers)]
