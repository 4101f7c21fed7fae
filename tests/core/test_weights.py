"""Fingerprints see every way weights change: moved, replaced, loaded in place, also into inference tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_compile.core.weights import storage_fingerprint, weights_fingerprint


def _model(inference: bool) -> nn.Module:
    if inference:
        with torch.inference_mode():
            return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))


@pytest.mark.parametrize("inference", [False, True])
def test_an_in_place_load_changes_the_weights_fingerprint_not_the_storage(inference) -> None:
    model = _model(inference)
    weights, storage = weights_fingerprint(model), storage_fingerprint(model)
    with torch.inference_mode():
        model.load_state_dict(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).state_dict())
    assert weights_fingerprint(model) != weights and storage_fingerprint(model) == storage


@pytest.mark.parametrize("inference", [False, True])
def test_moving_values_inside_a_tensor_shows(inference) -> None:
    model = _model(inference)
    before = weights_fingerprint(model)
    with torch.inference_mode():
        weight = model[0].weight
        weight.copy_(torch.cat([weight[4:], weight[:4]]))  # the same values, other places: the same norm
    assert weights_fingerprint(model) != before


def test_replacing_or_moving_a_weight_changes_the_storage() -> None:
    model = _model(False)
    storage = storage_fingerprint(model)
    model[0].weight.data = model[0].weight.data.clone()
    assert storage_fingerprint(model) != storage
    storage = storage_fingerprint(model)
    model.load_state_dict(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).state_dict(), assign=True)
    assert storage_fingerprint(model) != storage
    storage = storage_fingerprint(model)
    model.double()
    assert storage_fingerprint(model) != storage


def test_unchanged_weights_keep_their_fingerprints() -> None:
    model = _model(True)
    assert weights_fingerprint(model) == weights_fingerprint(model)
    assert storage_fingerprint(model) == storage_fingerprint(model)


def test_a_replaced_or_added_submodule_changes_the_storage_fingerprint() -> None:
    """The fingerprints walk the submodules again only when the tree changed: a nested submodule replaced by one of
    the same shape, or a new one added, must still show."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = storage_fingerprint(model)
    assert storage_fingerprint(model) == before
    model[1][0] = nn.Linear(4, 4)
    replaced = storage_fingerprint(model)
    assert replaced != before and weights_fingerprint(model) != before
    added = nn.Linear(4, 2)
    model[1].append(added)
    assert added.weight.data_ptr() in storage_fingerprint(model)[0]


def test_a_fingerprinted_module_can_still_be_freed() -> None:
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(4, 4))
    storage_fingerprint(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
