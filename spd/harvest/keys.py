"""Sampling keys that depend only on (seed, token position, component): the same firing gets the same key
whichever task processes it.

key = mix(position hash + component salt): a full SplitMix64 hash per token position and per component
(computed once each), one cheap mixing round per firing (`mix_keys`).

A uniform sample of k firings is "the k firings with the smallest keys" when keys are i.i.d. uniform
(bottom-k / priority sampling). Because a firing's key is a hash of where it is, not a draw from a task's
RNG stream, the selection is identical for 1 task or 16 tasks, a rerun task reproduces its shard exactly, and
merging shards is exact: the k smallest keys of a union are among the k smallest of each part, so no
per-shard weighting (reference section 7.3) is needed at all.

The hash is SplitMix64's finaliser on int64 tensors (wrap-around multiplication, logical shifts emulated
with masks), so it runs on CPU and CUDA alike; `hash64_py` is the plain-Python version tests compare with.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15
_SALT_TAG = 0x5A175A17  # separates the component-salt stream from the position stream of the same seed
KEY_BITS = 62  # keys lie in [0, 2**62): never equal to the "empty slot" marker EMPTY_KEY
MIX_MULTIPLIER = _M2  # the odd constant of mix_keys (also used by spd.harvest.batch_scan_numba)
EMPTY_KEY = torch.iinfo(torch.int64).max


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hash64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser of every int64 in x (bit pattern in, bit pattern out)."""
    x = x.to(torch.int64)
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


def hash64_py(x: int) -> int:
    """Reference implementation on Python ints (unsigned 64-bit semantics)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def position_hashes(seed: int, stream_position: Tensor) -> Tensor:
    """SplitMix64's output number `stream_position` for a seed-dependent start: one full hash per token position.

    Distinct positions get distinct, independent-looking 64-bit values (state + i * golden gamma, then the
    finaliser, a bijection). Computed once per token, not once per firing: a token has dozens of firings.
    """
    state = stream_position.to(torch.int64) * _signed(_GOLDEN) + _signed(hash64_py(seed))
    return hash64(state)


def component_salts(seed: int, component: Tensor) -> Tensor:
    """A 64-bit salt per component index (a hash stream of its own, started from the seed's other hash)."""
    state = component.to(torch.int64) * _signed(_GOLDEN) + _signed(hash64_py(seed ^ _SALT_TAG))
    return hash64(state)


def mix_keys(position_hash: Tensor, salt: Tensor) -> Tensor:
    """Keys in [0, 2**62) of firings from their position's hash and their component's salt (one cheap round).

    For one component every step is a bijection of the position hash (add a constant, xor-shift, multiply by an
    odd constant), so its keys are exactly as uniform and independent across positions as the position
    hashes themselves: that is all a component's uniform sample needs. The xor-shift and multiply make the
    orders of different components unrelated (tested: co-firing components' samples overlap as independent
    samples would), at about half the cost of a full hash per firing.
    """
    x = position_hash + salt
    x = (x ^ _shr(x, 32)) * _signed(MIX_MULTIPLIER)
    return _shr(x, 64 - KEY_BITS)


def firing_keys(seed: int, stream_position: Tensor, component: Tensor) -> Tensor:
    """Keys of firings at (stream position, flat component index): what a task computes, in one call."""
    return mix_keys(position_hashes(seed, stream_position), component_salts(seed, component))


def firing_keys_py(seed: int, stream_position: int, component: int) -> int:
    """Reference implementation of `firing_keys` for one firing (plain Python ints)."""
    h = hash64_py((stream_position * _GOLDEN + hash64_py(seed)) & _MASK64)
    salt = hash64_py((component * _GOLDEN + hash64_py(seed ^ _SALT_TAG)) & _MASK64)
    x = (h + salt) & _MASK64
    x = ((x ^ (x >> 32)) * _M2) & _MASK64
    return x >> (64 - KEY_BITS)


def magnitude_keys(values: Tensor, tie_break: Tensor) -> Tensor:
    """Keys that sort by |value| descending, ties by `tie_break` (a firing key) ascending.

    A non-negative float32's bit pattern is monotone in its value, so -bits * 2**31 + (31 high bits of the
    tie-break key) is an int64 whose ascending order is |value| descending, then tie-break ascending.
    """
    bits = values.detach().abs().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return -bits * (1 << 31) + _shr(tie_break, KEY_BITS - 31)


def magnitude_floor(threshold: Tensor) -> Tensor:
    """The |value| (float32) that magnitude keys `threshold` encode; 0 where a key is EMPTY_KEY (a free slot).

    A value whose |value| is below the floor of a selection's threshold has a larger key whatever its
    tie-break, so it cannot enter: comparing |value| >= floor finds every candidate before building keys.
    """
    value = (-(threshold >> 31)).to(torch.int32).view(torch.float32)
    return torch.where(threshold == EMPTY_KEY, torch.zeros_like(value), value)
