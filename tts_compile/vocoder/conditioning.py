"""A call's extra arguments (conditioning such as a VITS decoder's `g`): tensors go to every window of their item,
everything else passes unchanged; the signature keys the compiled callable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import torch

from .inputs import check_conditioning


@dataclass(frozen=True)
class Signature:
    """Where a call's extra arguments go: tensor slots (positional index or keyword) and constant values."""

    slots: tuple[int | str, ...]
    shapes: tuple[tuple[tuple[int, ...], torch.dtype], ...]  # per tensor, without its batch axis
    constants: tuple[tuple[int | str, Any], ...]
    n_args: int  # positional arguments after the mel

    def key(self) -> Hashable:
        return self.slots, self.shapes, tuple((slot, repr(value)) for slot, value in self.constants)

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        values = dict(self.constants)
        values.update(zip(self.slots, tensors))
        return [values[i] for i in range(self.n_args)], {k: v for k, v in values.items() if isinstance(k, str)}


@dataclass(frozen=True)
class Conditioning:
    """A call's extra arguments: per-item tensors [B or 1, ...] (no time axis) and constants."""

    signature: Signature
    tensors: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, args: Sequence[Any], kwargs: Mapping[str, Any], batch: int) -> "Conditioning":
        slots, tensors, constants = [], [], []
        for slot, value in [*enumerate(args), *kwargs.items()]:
            if isinstance(value, torch.Tensor):
                check_conditioning(slot, value, batch)
                slots.append(slot)
                tensors.append(value)
            else:
                constants.append((slot, value))
        shapes = tuple((tuple(t.shape[1:]), t.dtype) for t in tensors)
        return cls(Signature(tuple(slots), shapes, tuple(constants), len(args)), tuple(tensors))

    def for_items(self, items: Sequence[int]) -> list[torch.Tensor]:
        """Each tensor's rows for `items`, stacked (a batch-1 tensor is shared by every item)."""
        return [t.expand(len(items), *t.shape[1:]) if t.shape[0] == 1 else t[list(items)] for t in self.tensors]

    def call_args(self, items: Sequence[int]) -> tuple[list[Any], dict[str, Any]]:
        return self.signature.rebuild(self.for_items(items))

    def first_item(self) -> dict[int | str, Any]:
        """The arguments of the first item alone, keyed by slot (what the receptive-field probe calls with)."""
        values = dict(self.signature.constants)
        values.update({slot: t[:1] for slot, t in zip(self.signature.slots, self.tensors)})
        return values
