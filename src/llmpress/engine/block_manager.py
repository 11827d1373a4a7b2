"""KV-cache memory: fixed-size blocks preallocated once, handed out to sequences, shared by prefix hash.

A block holds `block_size` consecutive tokens' K and V for every layer. A full block whose KV has
been computed is registered under a hash chained over all tokens up to its end, so a later request
with the same prefix reuses it (ref-counted) instead of recomputing it. Freed blocks keep their hash
and stay reusable until they are handed out again (least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict

from llmpress.engine.sequence import Sequence


def block_hash(prev: int, tokens: list[int]) -> int:
    return hash((prev, tuple(tokens)))


class BlockManager:
    """Owns block ids 0..num_blocks-1; the tensors themselves live in the model runner."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hits = 0  # tokens served from the prefix cache (for metrics)

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    # -- prefix lookup -----------------------------------------------------------------
    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix; at least one token is left to compute (for logits)."""
        if not self.prefix_caching or seq.params.prompt_logprobs is not None:
            return []
        hits: list[int] = []
        h = 0
        for i in range((len(seq) - 1) // self.block_size):
            h = block_hash(h, seq.block_tokens(i))
            b = self.cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def can_allocate(self, seq: Sequence, budget: int) -> bool:
        """Whether a waiting sequence fits: its cached prefix plus up to `budget` new tokens."""
        hits = self._prefix_hits(seq)
        cached = len(hits) * self.block_size
        need = seq.num_blocks_for(cached + min(len(seq) - cached, budget)) - len(hits)
        reusable_free = sum(1 for b in hits if self.ref[b] == 0)
        return need <= self.num_free - reusable_free

    def allocate(self, seq: Sequence, n_tokens: int) -> None:
        """Give a waiting sequence blocks for its first `n_tokens`, reusing cached prefix blocks."""
        assert not seq.block_table
        hits = self._prefix_hits(seq)
        h = 0
        for b in hits:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1
            seq.block_table.append(b)
            h = self.hash_of[b]  # type: ignore[assignment]
            seq.block_hashes.append(h)
        seq.num_computed = seq.num_cached_prefix = len(hits) * self.block_size
        self.hits += seq.num_cached_prefix
        self.grow(seq, n_tokens)

    def grow(self, seq: Sequence, n_tokens: int) -> bool:
        """Make sure `seq` has blocks for `n_tokens` tokens; False (nothing changed) if memory is short."""
        need = seq.num_blocks_for(n_tokens) - len(seq.block_table)
        if need <= 0:
            return True
        if need > self.num_free:
            return False
        for _ in range(need):
            b, _ = self.free.popitem(last=False)
            old = self.hash_of[b]
            if old is not None and self.cached.get(old) == b:
                del self.cached[old]
            self.hash_of[b] = None
            self.ref[b] = 1
            seq.block_table.append(b)
        return True

    def can_grow(self, seq: Sequence, n_tokens: int) -> bool:
        return seq.num_blocks_for(n_tokens) - len(seq.block_table) <= self.num_free

    def register_computed(self, seq: Sequence) -> None:
        """Publish the hashes of blocks that became full and computed during the last step."""
        if not self.prefix_caching:
            return
        full = min(seq.num_computed, len(seq)) // self.block_size
        h = seq.block_hashes[-1] if seq.block_hashes else 0
        for i in range(len(seq.block_hashes), full):
            h = block_hash(h, seq.block_tokens(i))
            seq.block_hashes.append(h)
            b = seq.block_table[i]
            if h not in self.cached:
                self.cached[h] = b
                self.hash_of[b] = h

    def free_seq(self, seq: Sequence) -> None:
        """Return a sequence's blocks; hashed blocks stay findable until handed out again."""
        for b in reversed(seq.block_table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0
