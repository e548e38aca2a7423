"""experts/lazy.py: with every output in the store, a command starts without loading a model — and is never wrong."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import experts.lazy as lazy
from experts.ensemble import ExpertEnsemble
from experts.expert import Expert
from experts.lazy import LazyExpert, card_key, expert_digests
from experts.loading import ExpertLoadError
from experts.spec import load_ensemble_spec
from experts.store import ExpertStore


def _lr(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(seed))


def _same(a, b) -> None:
    assert torch.equal(a.srs, b.srs)
    assert all(torch.equal(x, y) for x, y in zip(a.feats, b.feats, strict=True))


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The names of the experts loaded in full from here on."""
    seen: list[str] = []
    real = lazy.load_expert

    def counting(spec, **kw):
        seen.append(spec.name)
        return real(spec, **kw)

    monkeypatch.setattr(lazy, "load_expert", counting)
    return seen


def test_stored_outputs_need_no_model_and_a_miss_loads_it(tiny_compact_experts, tmp_path, loads):
    yaml = tiny_compact_experts["yaml"]
    live = ExpertEnsemble.from_yaml(yaml)
    lr, other = _lr(), _lr(1)
    want, want_x8, want_other = live(lr), live.self_ensemble(lr), live(other)

    store = ExpertStore(tmp_path / "s")
    first = ExpertEnsemble.from_yaml(yaml, store=store)  # no cards yet: loaded in full, cards written
    assert loads == ["noisy", "calm"] and all(isinstance(e, Expert) for e in first.experts)
    assert len(list((tmp_path / "s" / "cards").glob("*.json"))) == 2
    _same(first(lr), want)
    _same(first.self_ensemble(lr), want_x8)

    loads.clear()
    second = ExpertEnsemble.from_yaml(yaml, store=store)
    assert all(isinstance(e, LazyExpert) for e in second.experts)
    assert second.fingerprints == first.fingerprints and second.feature_channels == first.feature_channels
    _same(second(lr), want)  # every output from the store
    _same(second.self_ensemble(lr), want_x8)
    assert loads == [] and not any(e.is_loaded for e in second.experts)
    _same(second(other), want_other)  # a new image: a miss loads each expert once, then it runs
    assert loads == ["noisy", "calm"] and all(e.is_loaded for e in second.experts)
    _same(second(other), want_other)
    assert loads == ["noisy", "calm"]
    assert store.verify() == []


def test_the_card_key_is_what_the_model_is_not_where_or_how_it_runs(tiny_compact_experts, tmp_path):
    spec = load_ensemble_spec(tiny_compact_experts["yaml"]).experts[0]
    digests = expert_digests(spec)
    key = card_key(spec, ensemble_scale=4, digests=digests)
    for same in (
        dataclasses.replace(spec, tile=64, tile_overlap=8),
        dataclasses.replace(spec, name="renamed", checkpoint=str(tmp_path / "elsewhere.pth")),
        dataclasses.replace(spec, hooks=("body.0",), min_probe_psnr=40.0, architecture="Compact"),  # checked on a hit
    ):
        assert card_key(same, ensemble_scale=4, digests=digests) == key
    changed = [
        card_key(spec, ensemble_scale=4, digests={"weights": "0" * 64}),
        card_key(dataclasses.replace(spec, precision="bf16"), ensemble_scale=4, digests=digests),
        card_key(dataclasses.replace(spec, checkpoint_key="params"), ensemble_scale=4, digests=digests),
        card_key(dataclasses.replace(spec, expect={"num_feat": 8}), ensemble_scale=4, digests=digests),
        card_key(spec, ensemble_scale=2, digests=digests),
    ]
    assert len({key, *changed}) == 1 + len(changed)
    # other bytes at the same path: another digest, so another key (never a stale card)
    moved = tmp_path / "w.pth"
    shutil.copy(spec.checkpoint, moved)
    assert expert_digests(dataclasses.replace(spec, checkpoint=str(moved))) == digests
    moved.write_bytes(moved.read_bytes() + b"\0")
    assert expert_digests(dataclasses.replace(spec, checkpoint=str(moved))) != digests


def test_pins_are_checked_with_a_card_too(tiny_compact_experts, tmp_path, loads):
    spec = load_ensemble_spec(tiny_compact_experts["yaml"])
    store = ExpertStore(tmp_path / "s")
    ExpertEnsemble.from_spec(spec, store=store)
    pinned = dataclasses.replace(spec.experts[0], sha256="f" * 64)
    with pytest.raises(ExpertLoadError, match="differs from the pinned"):
        ExpertEnsemble.from_spec(dataclasses.replace(spec, experts=(pinned, spec.experts[1])), store=store)
    gone = dataclasses.replace(spec.experts[0], checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ExpertLoadError, match="missing.pth: checkpoint file not found"):
        ExpertEnsemble.from_spec(dataclasses.replace(spec, experts=(gone, spec.experts[1])), store=store)


def test_a_bad_or_lying_card_is_never_trusted(tiny_compact_experts, tmp_path, capsys, loads):
    yaml = tiny_compact_experts["yaml"]
    store = ExpertStore(tmp_path / "s")
    ExpertEnsemble.from_yaml(yaml, store=store)
    cards = sorted((tmp_path / "s" / "cards").glob("*.json"))
    cards[0].write_text(cards[0].read_text().replace('"feature_channels": 8', '"feature_channels": 9'))
    assert "checksum mismatch in the record" in "\n".join(store.verify())
    assert not cards[0].exists()
    loads.clear()
    ens = ExpertEnsemble.from_yaml(yaml, store=store)  # the deleted card's expert is loaded in full again
    assert len(loads) == 1 and sum(isinstance(e, LazyExpert) for e in ens.experts) == 1

    # a card whose checksum is right but whose fingerprint is not what loading gives: refused on the first load
    key = cards[1].stem
    card = store.get_record("cards", key)
    card["fingerprint"]["feature_channels"] += 1
    store.put_record("cards", key, card)
    liar = ExpertEnsemble.from_yaml(yaml, store=store)
    lazy_one = next(e for e in liar.experts if isinstance(e, LazyExpert))
    with pytest.raises(ExpertLoadError, match="its card in the expert store says"):
        lazy_one.run(_lr())


def test_clear_removes_the_cards(tiny_compact_experts, tmp_path):
    store = ExpertStore(tmp_path / "s")
    ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"], store=store)(_lr())
    assert store.usage().entries == 4  # two outputs, two cards
    store.prune(0)
    assert store.usage().entries == 0 and not list((tmp_path / "s" / "cards").glob("*"))


def test_a_card_is_used_only_where_a_full_load_would_agree(tiny_compact_experts, tmp_path, loads):
    """The same weights under another name, path or with the hooks spelled out share the card, and the fingerprint
    is what a full load of that spec gives; other hooks, another architecture or a probe threshold above the card's
    score load in full — with the full load's error."""
    from experts.expert import load_expert

    spec = load_ensemble_spec(tiny_compact_experts["yaml"])
    store = ExpertStore(tmp_path / "s")
    first = ExpertEnsemble.from_spec(spec, store=store)
    noisy = spec.experts[0]
    moved = tmp_path / "copy.pth"
    shutil.copy(noisy.checkpoint, moved)
    default_hooks = first.experts[0].fingerprint.hook_layers
    for alias in (
        dataclasses.replace(noisy, name="alias", checkpoint=str(moved)),
        dataclasses.replace(noisy, hooks=default_hooks, sha256=first.experts[0].fingerprint.sha256),
    ):
        loads.clear()
        got = lazy.load_expert_cached(alias, store=store)
        assert isinstance(got, LazyExpert) and loads == []
        assert got.fingerprint.to_dict() == load_expert(alias).fingerprint.to_dict()
    for other in (
        dataclasses.replace(noisy, hooks=("body.1",)),
        dataclasses.replace(noisy, architecture="SPAN"),
        dataclasses.replace(noisy, min_probe_psnr=99.0),
    ):
        loads.clear()
        try:
            got = lazy.load_expert_cached(other, store=store)
        except ExpertLoadError as exc:  # what a load without the store says, too
            with pytest.raises(ExpertLoadError) as bare:
                load_expert(other)
            assert str(exc) == str(bare.value)
        else:
            assert isinstance(got, Expert)
            assert got.fingerprint.to_dict() == load_expert(other).fingerprint.to_dict()
        assert loads == [other.name]
