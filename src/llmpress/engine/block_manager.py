"""KV-cache memory: fixed-size blocks preallocated once, handed out to sequences, shared by prefix hash.

A block holds `block_size` consecutive tokens' K and V for every layer. A full block whose KV has
been computed is registered under a hash chained over all tokens up to its end (blake2b-128 of the
parent's hash and the token ids: not Python's `hash()`, which is weak on tuples of ints), so a later
request with the same prefix reuses it (ref-counted) instead of recomputing it. A hit is never
trusted on the hash alone: the block's tokens must equal the request's and its parent must be the
very block (and generation of it) the request's previous block matched, so even a hash collision
cannot serve another request's KV. Freed blocks keep their hash and stay reusable until they are
handed out again (least recently freed first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from llmpress.engine.sequence import Sequence

ROOT = b""  # the parent hash of a sequence's first block


def block_hash(prev: bytes, tokens: list[int]) -> bytes:
    """Hash of a full block chained over its parent's: 16 bytes of blake2b over (parent, token ids)."""
    return hashlib.blake2b(prev + array("q", tokens).tobytes(), digest_size=16).digest()


class BlockManager:
    """Owns block ids 0..num_blocks-1; the tensors themselves live in the model runner."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.tokens_of: list[tuple[int, ...] | None] = [None] * num_blocks  # what a hashed block holds
        self.parent_of: list[tuple[int, int] | None] = [None] * num_blocks  # (block, generation) before it
        self.generation = [0] * num_blocks  # bumped each time a block is handed out for new content
        self.cached: dict[bytes, int] = {}  # hash -> block id
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
        h = ROOT
        parent: tuple[int, int] | None = None
        for i in range((len(seq) - 1) // self.block_size):
            tokens = seq.block_tokens(i)
            h = block_hash(h, tokens)
            b = self.cached.get(h)
            if b is None or self.tokens_of[b] != tuple(tokens) or self.parent_of[b] != parent:
                break  # a miss, or a hash collision caught by the token / parent check
            hits.append(b)
            parent = (b, self.generation[b])
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
        for b in hits:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1
            seq.block_table.append(b)
            seq.block_hashes.append(self.hash_of[b])  # type: ignore[arg-type]
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
            self.hash_of[b] = self.tokens_of[b] = self.parent_of[b] = None
            self.generation[b] += 1
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
        h = seq.block_hashes[-1] if seq.block_hashes else ROOT
        for i in range(len(seq.block_hashes), full):
            tokens = seq.block_tokens(i)
            h = block_hash(h, tokens)
            seq.block_hashes.append(h)
            b = seq.block_table[i]
            if h not in self.cached and self.hash_of[b] is None:
                prev = seq.block_table[i - 1] if i else None
                self.cached[h] = b
                self.hash_of[b] = h
                self.tokens_of[b] = tuple(tokens)
                self.parent_of[b] = None if prev is None else (prev, self.generation[prev])

    def free_seq(self, seq: Sequence) -> None:
        """Return a sequence's blocks; hashed blocks stay findable until handed out again."""
        for b in reversed(seq.block_table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0
