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
                 dtype: torch.dtype, device: str, page_size: int = 1, int8: bool = False) -> None:
        if num_slots < 2 * page_size:
            raise ValueError(f"KV pool of {num_slots} slots is too small for page_size {page_size}")
        self.page_size = page_size
        self.num_pages = num_slots // page_size
        self.num_slots = self.num_pages * page_size
        # per layer: [num_kv_heads, num_slots, head_dim], head-major so that a gather of
        # B requests' slots is already [Hkv, B, max_kv, D] for batched matmuls on CPU.
        # Left uninitialised (untouched pages cost no RAM) except the padding page, which
        # masked reads may touch: it must hold finite values so that 0-weight * value stays 0.
        # int8: each (head, token) vector stored as int8 with a float32 scale [num_kv_heads, num_slots]
        # (its largest |value| / 127), dequantized to `dtype` where attention reads it.
        shape = (num_kv_heads, self.num_slots, head_dim)
        store = torch.int8 if int8 else dtype
        self.k_buffers = [torch.empty(shape, dtype=store, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.empty(shape, dtype=store, device=device) for _ in range(num_layers)]
        self.k_scales = [torch.zeros(shape[:2], device=device) for _ in range(num_layers)] if int8 else None
        self.v_scales = [torch.zeros(shape[:2], device=device) for _ in range(num_layers)] if int8 else None
        for buf in self.k_buffers + self.v_buffers:
            buf[:, :page_size].zero_()
        self.dtype, self.head_dim, self.device = dtype, head_dim, device
        self.clear()

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, int8: bool) -> int:
        per_vector = head_dim + 4 if int8 else head_dim * torch.finfo(dtype).bits // 8  # int8: + its scale
        return 2 * num_layers * num_kv_heads * per_vector

    # ---- K/V reads and writes ----------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [T, Hkv, D] of the tokens at `slots` [T]."""
        for buffers, scales, x in ((self.k_buffers, self.k_scales, k), (self.v_buffers, self.v_scales, v)):
            x = x.transpose(0, 1)  # [Hkv, T, D]
            if scales is None:
                buffers[layer].index_copy_(1, slots, x)
                continue
            scale = x.abs().amax(dim=-1).float().clamp_min(1e-12) / 127  # [Hkv, T]
            buffers[layer].index_copy_(1, slots, torch.round(x.float() / scale[..., None]).to(torch.int8))
            scales[layer].index_copy_(1, slots, scale)

    def rows(self, layer: int, value: bool, rows: torch.Tensor) -> torch.Tensor:
        """K (or V) vectors [N, D] at flat rows head * num_slots + slot, in `dtype`."""
        out = (self.v_buffers if value else self.k_buffers)[layer].view(-1, self.head_dim).index_select(0, rows)
        scales = self.v_scales if value else self.k_scales
        if scales is None:
            return out
        return out.to(self.dtype) * scales[layer].view(-1).index_select(0, rows)[:, None].to(self.dtype)

    def slot_range(self, layer: int, value: bool, start: int, length: int) -> torch.Tensor:
        """K (or V) of consecutive slots [Hkv, length, D] in `dtype` (a view when not int8)."""
        out = (self.v_buffers if value else self.k_buffers)[layer].narrow(1, start, length)
        scales = self.v_scales if value else self.k_scales
        if scales is None:
            return out
        return out.to(self.dtype) * scales[layer].narrow(1, start, length)[..., None].to(self.dtype)

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
