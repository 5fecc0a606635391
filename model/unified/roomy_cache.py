"""A KV cache that grows in steps of `room` tokens instead of one: transformers' `DynamicLayer`
concatenates the whole cache onto a new tensor at every decoded token, which was a quarter of a
288-row critic batch's time on this CPU (cProfile: `torch.cat` 1.5 of 6.9 s). Here each layer keeps a
buffer with spare room, writes a step in place and returns a view of the filled part; only a step
that outgrows the room copies. Same keys and values, so the same outputs to the token (tested)."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 32  # tokens of spare room per reallocation: one reflection chunk (24) fits


class RoomyLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` are views into a larger buffer."""

    def __init__(self, room: int = ROOM):
        super().__init__()
        self.room, self.buffers = room, None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled, n = self.get_seq_length(), key_states.shape[-2]
        if not self._writable(filled + n, key_states):
            self._regrow(filled + n + self.room, filled, key_states, value_states)
        keys, values = self.buffers
        keys[:, :, filled:filled + n] = key_states
        values[:, :, filled:filled + n] = value_states
        self.keys, self.values = keys[:, :, :filled + n], values[:, :, :filled + n]
        return self.keys, self.values

    def _writable(self, length: int, new: torch.Tensor) -> bool:
        """The buffer still backs `keys` (batch_select_indices and crop replace or shorten them) and has room."""
        if self.buffers is None:
            return False
        keys = self.buffers[0]
        return (keys.shape[0] == new.shape[0] and length <= keys.shape[2]
                and (self.keys.numel() == 0 or self.keys.data_ptr() == keys.data_ptr()))

    def _regrow(self, capacity: int, filled: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        keys = key_states.new_empty(batch, heads, capacity, dim)
        values = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if filled:
            keys[:, :, :filled], values[:, :, :filled] = self.keys, self.values
        self.buffers = (keys, values)

    def reset(self) -> None:
        self.buffers = None
        super().reset()


def roomy_cache(config, room: int = ROOM) -> DynamicCache:
    """A `DynamicCache` for `config`'s decoder whose layers are `RoomyLayer`s (full attention only);
    `room`: the tokens a call will add after its prompt, where known (one allocation then)."""
    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return cache  # sliding-window or linear layers: keep transformers' own
    cache.layers = [RoomyLayer(room) for _ in cache.layers]
    return cache
