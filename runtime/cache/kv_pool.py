"""The KV pool: preallocated K/V tensors per layer plus a slot allocator.

A *slot* holds the K and V of one token in every layer. Slots are handed out in
pages of `page_size` consecutive slots; a request's slots are recorded in the
`ReqToTokenTable`. NOTE: page 0 (slots 0..page_size-1) is reserved as padding, so
index tensors may be padded with 0 safely.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(self, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str, page_size: int = 1) -> None:
        if num_slots < 2 * page_size:
            raise ValueError(f"KV pool of {num_slots} slots is too small for page_size {page_size}")
        self.page_size = page_size
        self.num_pages = num_slots // page_size
        self.num_slots = self.num_pages * page_size
        # per layer: [num_kv_heads, num_slots, head_dim], head-major so that a gather of
        # B requests' slots is already [Hkv, B, max_kv, D] for batched matmuls on CPU.
        # Left uninitialised (untouched pages cost no RAM) except the padding page, which
        # masked reads may touch: it must hold finite values so that 0-weight * value stays 0.
        shape = (num_kv_heads, self.num_slots, head_dim)
        self.k_buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for buf in self.k_buffers + self.v_buffers:
            buf[:, :page_size].zero_()
        self.device = device
        self.clear()

    # ---- allocator -------------------------------------------------------------
    def clear(self) -> None:
        self._free_pages = torch.arange(1, self.num_pages, dtype=torch.int64)

    @property
    def capacity(self) -> int:
        """Slots a request can ever use (all but the reserved padding page)."""
        return (self.num_pages - 1) * self.page_size

    def available_size(self) -> int:
        return len(self._free_pages) * self.page_size

    def pages_needed(self, prefix_len: int, extend_len: int) -> int:
        """Pages to allocate when a sequence grows from prefix_len to prefix_len + extend_len."""
        p = self.page_size
        return (prefix_len + extend_len + p - 1) // p - (prefix_len + p - 1) // p

    def allocate(self, prefix_len: int, extend_len: int, last_slot: int | None) -> torch.Tensor:
        """Slots for positions prefix_len .. prefix_len+extend_len-1 of one sequence.

        `last_slot` is the slot of position prefix_len-1 (None when prefix_len == 0);
        a partly filled last page is continued before new pages are taken.
        Returns an int64 tensor [extend_len]. Caller checks `pages_needed` against `available_size` first.
        """
        p = self.page_size
        if p == 1:
            out = self._free_pages[:extend_len]
            self._free_pages = self._free_pages[extend_len:]
            return out.clone()
        parts = []
        used_in_last = prefix_len % p
        if used_in_last:
            take = min(p - used_in_last, extend_len)
            parts.append(torch.arange(last_slot + 1, last_slot + 1 + take, dtype=torch.int64))
            extend_len -= take
        num_pages = (extend_len + p - 1) // p
        if num_pages:
            pages = self._free_pages[:num_pages]
            self._free_pages = self._free_pages[num_pages:]
            slots = (pages[:, None] * p + torch.arange(p)[None, :]).flatten()[:extend_len]
            parts.append(slots)
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def allocate_decode(self, last_slots: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        """One slot per sequence for its token at `positions` [B]; last_slots [B] holds
        each sequence's slot at position-1 (unused, may be None, when page_size is 1).
        Caller checks capacity first."""
        p = self.page_size
        if p == 1:  # a view is safe: the free list is replaced, never written in place
            out = self._free_pages[:len(positions)]
            self._free_pages = self._free_pages[len(positions):]
            return out
        out = last_slots + 1  # continue the current page ...
        starts_page = positions % p == 0  # ... unless the token opens a new one
        num_new = int(starts_page.sum())
        if num_new:
            out[starts_page] = self._free_pages[:num_new] * p
            self._free_pages = self._free_pages[num_new:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        """Return slots to the pool. With pages, a page is freed when its first slot is;
        callers free whole pages (a sequence's slots from a page boundary onwards)."""
        if slots.numel() == 0:
            return
        if self.page_size == 1:
            self._free_pages = torch.cat([self._free_pages, slots.to(torch.int64).cpu()])
        else:
            slots = slots.to(torch.int64).cpu()
            pages = torch.unique(slots[slots % self.page_size == 0] // self.page_size)
            self._free_pages = torch.cat([self._free_pages, pages])

    def free_slot_ids(self) -> torch.Tensor:
        """All free slot ids (for leak checks in tests)."""
        p = self.page_size
        return (self._free_pages[:, None] * p + torch.arange(p)[None, :]).flatten()


class ReqToTokenTable:
    """Row r holds the slot index of every token of the request living in row r.

    table: int64 [max_requests + 1, max_context_len]; row 0 is never handed out.
    """

    def __init__(self, max_requests: int, max_context_len: int, device: str) -> None:
        self.table = torch.zeros(max_requests + 1, max_context_len, dtype=torch.int64, device=device)
        self._free_rows = list(range(max_requests, 0, -1))
        self.max_requests = max_requests

    def available_size(self) -> int:
        return len(self._free_rows)

    def allocate(self) -> int:
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        self._free_rows.append(row)
