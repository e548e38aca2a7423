"""Training-free ensemblers (pipeline.inference.ensemblers): mean, ZZPM and blend against hand-computed values, the
blend and
EnsIR fits recovering known weights, EnsIR's LUT against a per-pixel loop, the JSON file (round trip, refusal of
other experts and of malformed files) and fitting on a tiny HDF5 cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cache.schema import CacheMeta
from cache.writer import CacheWriter
from pipeline.core.metrics import rgb_to_y
from pipeline.evaluation.cached import fit_on_cache
from pipeline.inference.ensemblers import METHODS, Blend, Ensembler, EnsemblerError, EnsIR, Mean, apply, fit, load, save

pytestmark = pytest.mark.usefixtures("single_thread")


def _fps(n: int = 2, *, sha: str = "0") -> tuple[dict, ...]:
    return tuple({"name": f"e{i}", "sha256": (sha + str(i)) * 32, "architecture": "X"} for i in range(n))


def _const(*values: float, h: int = 3, w: int = 4) -> torch.Tensor:
    """One image per expert, each constant: ``(1,E,3,h,w)``."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1, 1).expand(1, len(values), 3, h, w).clone()


# -------------------------------------------------------------------------------------------------- mean / ZZPM
def test_mean_is_the_experts_mean():
    srs = torch.rand(2, 3, 3, 5, 6)
    assert torch.equal(apply(Mean(experts=_fps(3)), srs), srs.mean(1))
    assert fit("mean", [], experts=_fps(3)).method == "mean"  # nothing to fit


def test_zzpm_hand_computed():
    ens = fit("zzpm", [], experts=_fps(3))
    srs = torch.cat([_const(100 / 255, 101 / 255, 103 / 255), _const(50 / 255, 52 / 255, 53 / 255)])  # 2 images
    out = apply(ens, srs)
    for b, levels in enumerate([(100, 101, 103), (50, 52, 53)]):
        mean = sum(levels) / 3
        logits = [1 / (1e-3 + (v - mean) ** 2) for v in levels]  # MSE of a constant image = its squared offset
        z = sum(math.exp(t) for t in logits)
        expected = sum(math.exp(t) / z * v for t, v in zip(logits, levels, strict=True)) / 255
        assert abs(float(out[b, 0, 0, 0]) - expected) < 1e-6
        assert torch.allclose(out[b], out[b, 0, 0, 0].expand(3, 3, 4))
    # with two experts both MSEs are equal: ZZPM is the mean
    two = torch.rand(1, 2, 3, 4, 4)
    assert torch.allclose(apply(fit("zzpm", [], experts=_fps(2)), two), two.mean(1), atol=1e-7)


def test_zzpm_weights_are_per_image_over_all_pixels_and_channels():
    srs = torch.rand(1, 3, 3, 6, 7)
    x = srs.double() * 255
    mse = (x - x.mean(1, keepdim=True)).square().mean(dim=(2, 3, 4))[0]  # (E,)
    w = torch.softmax(1 / (1e-3 + mse), 0)
    expected = (w.view(3, 1, 1, 1) * srs[0].double()).sum(0).clamp(0, 1).float()
    assert torch.allclose(apply(fit("zzpm", [], experts=_fps(3)), srs)[0], expected, atol=1e-6)


# -------------------------------------------------------------------------------------------------------- blend
def test_blend_apply_hand_computed_and_clamped():
    ens = Blend(experts=_fps(2), weights=[0.25, 0.75])
    assert torch.allclose(apply(ens, _const(0.2, 0.6)), torch.full((1, 3, 3, 4), 0.5))
    over = Blend(experts=_fps(2), weights=[2.0, -1.0])  # 2·0.8 − 0.2 = 1.4 → 1
    assert torch.equal(apply(over, _const(0.8, 0.2)), torch.ones(1, 3, 3, 4))


def test_blend_fit_hand_computed():
    # grey pixels: Y − 16 = 219·v, so the fit is the 2×2 system 0.2a + 0.6b = 0.5, 0.4a + 0.2b = 0.3 → a 0.4, b 0.7
    a = torch.tensor([0.2, 0.4]).view(1, 1, 2).expand(3, 1, 2)
    b = torch.tensor([0.6, 0.2]).view(1, 1, 2).expand(3, 1, 2)
    hr = torch.tensor([0.5, 0.3]).view(1, 1, 2).expand(3, 1, 2)
    ens = fit("blend", [(torch.stack([a, b])[None], hr[None])], experts=_fps(2), border=0)
    assert torch.allclose(ens.weights, torch.tensor([0.4, 0.7], dtype=torch.float64), atol=1e-9)


def test_blend_fit_recovers_known_weights_streaming_with_border():
    gen = torch.Generator().manual_seed(1)
    samples = []
    for h, w in ((24, 20), (17, 30), (12, 12)):
        a, b = torch.rand(1, 3, h, w, generator=gen), torch.rand(1, 3, h, w, generator=gen)
        samples.append((torch.stack([a, b], 1), 0.7 * a + 0.3 * b))
    ens = fit("blend", iter(samples), experts=_fps(2), border=4)  # a generator: the fit streams
    assert ens.weights.dtype == torch.float64
    assert torch.allclose(ens.weights, torch.tensor([0.7, 0.3], dtype=torch.float64), atol=1e-6)
    srs, hr = samples[0]  # the blend's Y is the fitted Y
    assert torch.allclose(rgb_to_y(apply(ens, srs)), rgb_to_y(hr), atol=1e-3)


def test_blend_fit_weights_any_sign():
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.rand(1, 3, 16, 16, generator=gen) * 0.5 + 0.25 for _ in range(3))
    hr = 1.2 * a - 0.5 * b + 0.3 * c
    ens = fit("blend", [(torch.stack([a, b, c], 1), hr)], experts=_fps(3), border=2)
    assert torch.allclose(ens.weights, torch.tensor([1.2, -0.5, 0.3], dtype=torch.float64), atol=1e-6)


# -------------------------------------------------------------------------------------------------------- EnsIR
def _levels(v: torch.Tensor) -> torch.Tensor:
    """0–255 values → float image in [0,1]."""
    return (v / 255.0).float()


def test_ensir_em_recovers_mixture_weights():
    """One bin set, (A in [64,96), B in [96,128)): the HR is drawn from 0.7·N(μ_A, 4²) + 0.3·N(μ_B, 4²) around the
    experts' bin means, so EM must find π = (0.7, 0.3) in every channel."""
    gen = torch.Generator().manual_seed(3)
    shape = (1, 3, 96, 96)
    a = 80.0 + (torch.rand(shape, generator=gen) - 0.5) * 31.8  # mean 80, inside [64, 96)
    b = 112.0 + (torch.rand(shape, generator=gen) - 0.5) * 31.8  # mean 112, inside [96, 128)
    pick_b = torch.rand(shape, generator=gen) < 0.3
    y = torch.where(pick_b, b.mean(), a.mean()) + 4.0 * torch.randn(shape, generator=gen)
    hr = _levels(y.round().clamp(0, 255))
    srs = torch.stack([_levels(a), _levels(b)], 1)
    ens = fit("ensir", [(srs, hr)], experts=_fps(2), border=0)
    assert ens.bin_width == 32 and ens.lut.shape == (64, 3, 2)  # 8 bins per expert, 8² bin sets
    row = 2 * 8 + 3
    for c in range(3):
        frac_b = float(pick_b[0, c].double().mean())  # the drawn proportion
        assert abs(float(ens.lut[row, c, 1]) - frac_b) < 0.02, ens.lut[row]
        assert abs(float(ens.lut[row, c].sum()) - 1) < 1e-9
    others = torch.ones(64, dtype=torch.bool)
    others[row] = False  # no pixel elsewhere: the global weights (here the same single mixture)
    assert torch.equal(ens.lut[others], ens.global_weights.expand(63, 3, 2))


def test_ensir_prefers_the_accurate_expert_per_intensity_range():
    """Dark half: A is near-exact, B biased and noisy; bright half: the reverse. Each bin set's weights go to the
    expert that is right there, and the ensemble beats both experts and their mean."""
    gen = torch.Generator().manual_seed(4)
    h, w = 40, 40
    y = torch.empty(1, 3, h, w)
    y[..., : h // 2, :] = torch.randint(70, 91, (1, 3, h // 2, w), generator=gen).float()  # bin 2: [64, 96)
    y[..., h // 2 :, :] = torch.randint(170, 186, (1, 3, h // 2, w), generator=gen).float()  # bin 5: [160, 192)
    exact = y + 0.5 * torch.randn(y.shape, generator=gen)
    far_up = y + 48 + 4 * torch.randn(y.shape, generator=gen)
    far_down = y - 48 + 4 * torch.randn(y.shape, generator=gen)
    dark = torch.zeros_like(y, dtype=torch.bool)
    dark[..., : h // 2, :] = True
    a = torch.where(dark, exact, far_down)
    b = torch.where(dark, far_up, exact)
    srs, hr = torch.stack([_levels(a), _levels(b)], 1), _levels(y)
    ens = fit("ensir", [(srs, hr)], experts=_fps(2), border=0)
    checked = 0
    for ba in range(8):
        for bb in range(8):
            count = int(((a // 32 == ba) & (b // 32 == bb)).sum())
            if count < 3 * 100:
                continue
            pi = ens.lut[ba * 8 + bb]  # (3,2)
            if ba == 2:  # dark pixels: A is right
                assert bool((pi[:, 0] > 0.95).all()), (ba, bb, pi)
            else:
                assert bb == 5 and bool((pi[:, 1] > 0.95).all()), (ba, bb, pi)
            checked += 1
    assert checked >= 3

    def mse(x):
        return float((x - hr).square().mean())

    out = apply(ens, srs)
    assert mse(out) < 0.2 * min(mse(srs[:, 0]), mse(srs[:, 1]), mse(srs.mean(1)))


def test_ensir_lut_application_matches_direct_per_pixel():
    gen = torch.Generator().manual_seed(5)
    e, bw = 3, 100  # 3 bins per expert ([0,100), [100,200), [200,255]), 27 bin sets
    lut = torch.rand(27, 3, e, generator=gen, dtype=torch.float64) * 2 - 0.5
    ens = EnsIR(experts=_fps(e), bin_width=bw, lut=lut, global_weights=torch.zeros(3, e))
    srs = torch.rand(2, e, 3, 4, 5, generator=gen) * 1.1 - 0.05  # a few values outside [0,1]
    out = apply(ens, srs)
    expected = torch.empty(2, 3, 4, 5)
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    vals = [float(srs[b, k, c, i, j]) for k in range(e)]
                    bins = [min(max(int(math.floor(v * 255 / bw)), 0), 2) for v in vals]
                    row = bins[0] * 9 + bins[1] * 3 + bins[2]
                    acc = sum(float(lut[row, c, k]) * vals[k] for k in range(e))
                    expected[b, c, i, j] = min(max(acc, 0.0), 1.0)
    assert torch.allclose(out, expected, atol=1e-6)


def test_ensir_sparse_bin_sets_use_global_weights():
    gen = torch.Generator().manual_seed(6)
    srs = torch.rand(1, 2, 3, 20, 20, generator=gen)
    hr = srs.mean(1)
    dense = fit("ensir", [(srs, hr)], experts=_fps(2), border=0, bin_width=128, min_pixels=1)
    sparse = fit("ensir", [(srs, hr)], experts=_fps(2), border=0, bin_width=128, min_pixels=10**6)
    assert not torch.equal(dense.lut, dense.global_weights.expand(4, 3, 2))
    assert torch.equal(sparse.lut, sparse.global_weights.expand(4, 3, 2))
    assert torch.allclose(sparse.global_weights, dense.global_weights)


# ------------------------------------------------------------------------------------------------ file + checks
def _fitted(method: str) -> Ensembler:
    gen = torch.Generator().manual_seed(7)
    samples = [(torch.rand(1, 2, 3, 16, 16, generator=gen), torch.rand(1, 3, 16, 16, generator=gen))]
    return fit(method, samples, experts=_fps(2), border=2, bin_width=64, min_pixels=20)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_identical_outputs(tmp_path, method):
    ens = _fitted(method)
    path = save(ens, tmp_path / f"{method}.json")
    again = load(path, experts=_fps(2))
    assert again.method == method and again.experts == ens.experts
    srs = torch.rand(2, 2, 3, 9, 7)
    assert torch.equal(apply(again, srs), apply(ens, srs))
    payload = json.loads(path.read_text())
    assert payload["format"] == "sr-ensembler" and payload["experts"][1]["sha256"] == _fps(2)[1]["sha256"]
    assert path.stat().st_size < 20_000


def test_load_refuses_other_experts(tmp_path):
    path = save(_fitted("blend"), tmp_path / "blend.json")
    other = _fps(2, sha="f")
    with pytest.raises(EnsemblerError) as err:
        load(path, experts=other)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert f"e0@{_fps(2)[0]['sha256'][:12]}" in msg and f"e0@{other[0]['sha256'][:12]}" in msg
    with pytest.raises(EnsemblerError, match="fitted for"):
        load(path, experts=_fps(3))
    assert load(path).method == "blend"  # without experts: no check


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.update(method="median"), "method"),
        (lambda d: d["params"].update(weights=[1.0, 2.0, 3.0]), "weights"),
        (lambda d: d["params"].pop("weights"), "params"),
        (lambda d: d["experts"][0].pop("sha256"), "experts[0].sha256"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(format="something"), "format"),
    ],
)
def test_load_refuses_malformed_files(tmp_path, mutate, key):
    path = save(_fitted("blend"), tmp_path / "blend.json")
    payload = json.loads(path.read_text())
    mutate(payload)
    path.write_text(json.dumps(payload))
    with pytest.raises(EnsemblerError) as err:
        load(path)
    assert str(path) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.update(comment="fitted by hand"), "unknown top-level keys ['comment']"),
        (lambda d: d["experts"][0].update(checkpoint="x" * 100_000), "experts[0].checkpoint: 'xxx"),
        (lambda d: d["experts"][1].update(extra="?"), "experts[1]: unknown keys ['extra']"),
        (lambda d: d["experts"][0].update(scale="4"), "experts[0].scale: expected a JSON int"),
        (lambda d: d["experts"][0].update(feature_channels=True), "experts[0].feature_channels: expected a JSON int"),
        (lambda d: d["experts"][0].update(hook_layers=["a", 1]), "experts[0].hook_layers: expected a JSON list"),
        (lambda d: d["experts"][0].update(hyperparameters={"k": "v" * 70_000}), "experts[0].hyperparameters: "),
        (lambda d: d["experts"][0].update(code={"file": "a.py", "evil": 1}), "experts[0].code: unknown keys"),
        (lambda d: d["experts"].__setitem__(0, "e0"), "experts[0]: expected a fingerprint mapping"),
        (lambda d: d["params"].update(extra=[1]), "params: method 'blend' takes ['weights'], got ['extra', 'weights']"),
    ],
)
def test_load_is_strict_at_every_level_and_cuts_long_fields(tmp_path, mutate, key):
    path = save(_fitted("blend"), tmp_path / "blend.json")
    payload = json.loads(path.read_text())
    mutate(payload)
    path.write_text(json.dumps(payload))
    with pytest.raises(EnsemblerError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and key in msg and "\n" not in msg and len(msg) < 600, msg[:800]


def test_a_real_fingerprint_passes_the_fit_files_checks(tmp_path):
    import dataclasses

    from experts.expert import ExpertFingerprint

    fp = ExpertFingerprint(
        **{f.name: None for f in dataclasses.fields(ExpertFingerprint)}
        | dict(name="e0", architecture="SPAN", checkpoint="../shared/w.pth", sha256="a" * 64, scale=4, input="lr")
        | dict(hook_layers=("conv",), feature_channels=8, precision="fp32", num_params=10, tags=("SR",))
        | dict(hyperparameters={"upscale": 4}, code={"file": "m.py", "sha256": "b" * 64, "class_name": "M"})
    ).to_dict() | {"self_ensemble": 8}
    other = dict(fp, name="e1")
    ens = Blend(experts=(fp, other), weights=[0.5, 0.5])
    assert load(save(ens, tmp_path / "b.json")).experts == (fp, other)


def test_load_refuses_corrupt_or_missing_json(tmp_path):
    path = save(_fitted("ensir"), tmp_path / "ensir.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(EnsemblerError, match="not valid JSON") as err:
        load(path)
    assert str(path) in str(err.value)
    lut_bad = json.loads(save(_fitted("ensir"), tmp_path / "e2.json").read_text())
    lut_bad["params"]["lut"] = lut_bad["params"]["lut"][:-1]
    (tmp_path / "e2.json").write_text(json.dumps(lut_bad))
    with pytest.raises(EnsemblerError, match="lut: expected shape"):
        load(tmp_path / "e2.json")
    with pytest.raises(EnsemblerError, match="not found"):
        load(tmp_path / "absent.json")


def test_apply_and_fit_check_the_number_of_experts():
    with pytest.raises(EnsemblerError, match="fitted for 2 experts"):
        apply(Mean(experts=_fps(2)), torch.rand(1, 3, 3, 4, 4))
    with pytest.raises(EnsemblerError, match="sample 0"):
        fit("blend", [(torch.rand(1, 3, 3, 8, 8), torch.rand(1, 3, 8, 8))], experts=_fps(2))
    with pytest.raises(EnsemblerError, match="method"):
        fit("median", [], experts=_fps(2))
    with pytest.raises(EnsemblerError, match="takes"):
        Mean.from_parameters({"weights": [0.5, 0.5]}, experts=_fps(2))


# ---------------------------------------------------------------------------------------------------- the cache
def _write_cache(path, *, with_hr: bool, seed: int = 0):
    meta = CacheMeta(
        scale=4,
        experts=tuple(
            {**fp, "hook_layers": ["body"], "feature_channels": 2, "scale": 4, "input": "lr"} for fp in _fps(2)
        ),
        lr_method="matlab_bicubic",
    )
    rng = np.random.default_rng(seed)
    arrays = {}
    with CacheWriter(path, meta=meta) as w:
        for name, (h, wd) in {"a": (6, 7), "b": (5, 9)}.items():
            srs = rng.random((2, 3, 4 * h, 4 * wd)).astype(np.float16)
            hr = rng.integers(0, 256, (3, 4 * h, 4 * wd), dtype=np.uint8)
            w.write_sample(
                name,
                lr=rng.integers(0, 256, (3, h, wd), dtype=np.uint8),
                hr=hr if with_hr else None,
                srs=srs,
                feats=[rng.standard_normal((2, h, wd)).astype(np.float16) for _ in range(2)],
            )
            arrays[name] = (torch.from_numpy(srs.astype(np.float32))[None], torch.from_numpy(hr).float()[None] / 255)
        w.write_index(list(arrays))
    return meta, arrays


def test_fit_on_cache_equals_fit_on_the_whole_images(tmp_path):
    meta, arrays = _write_cache(tmp_path / "c.h5", with_hr=True)
    for method in METHODS:
        ens = fit_on_cache(method, tmp_path / "c.h5", bin_width=128, min_pixels=10)
        assert ens.experts == tuple(meta.experts)
        ref = fit(method, arrays.values(), experts=meta.experts, border=4, bin_width=128, min_pixels=10)
        srs = torch.rand(1, 2, 3, 8, 8)
        assert torch.allclose(apply(ens, srs), apply(ref, srs), atol=1e-12)
    blend = fit_on_cache("blend", tmp_path / "c.h5")
    assert not torch.allclose(blend.weights, fit_on_cache("blend", tmp_path / "c.h5", border=0).weights)


def test_fit_on_cache_without_hr(tmp_path):
    _write_cache(tmp_path / "lr_only.h5", with_hr=False)
    with pytest.raises(EnsemblerError, match="no HR"):
        fit_on_cache("ensir", tmp_path / "lr_only.h5")
    assert fit_on_cache("zzpm", tmp_path / "lr_only.h5").method == "zzpm"


# -------------------------------------------------------------------------------------------- top-k / blend_reg
def _noisy_pool(n_images: int, *, seed: int = 7, e: int = 5, h: int = 20, w: int = 20):
    """``e`` experts = HR + noise of growing strength (expert 0 best); images as (srs (1,E,3,h,w), hr)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_images):
        hr = torch.rand(1, 3, h, w, generator=gen) * 0.6 + 0.2
        noise = torch.randn(1, e, 3, h, w, generator=gen) * torch.linspace(0.02, 0.2, e).view(1, e, 1, 1, 1)
        out.append((hr[:, None] + noise, hr))
    return out


def test_topk_takes_the_best_experts_by_training_psnr():
    ens = fit("topk", _noisy_pool(4), experts=_fps(5), border=0)
    w = ens.weights.tolist()
    k = sum(1 for x in w if x)
    assert 1 <= k < 5 and w[:k] == [1.0 / k] * k and w[k:] == [0.0] * (5 - k)  # the best first, the worst left out
    srs, hr = _noisy_pool(1, seed=99)[0]
    assert torch.allclose(apply(ens, srs), srs[:, :k].mean(1).clamp(0, 1))


def test_blend_reg_cross_validates_towards_the_mean_on_few_noisy_images():
    """Twelve comparable experts (a shared error plus a small error of their own, the same size for all: the mean is
    the ideal blend) and a few tiny training images: the free least-squares blend fits the training noise, the
    cross-validated regularised blend stays near the mean and is clearly better on new images."""

    def pool(n, seed, h):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            hr = torch.rand(1, 3, h, h, generator=gen) * 0.6 + 0.2
            shared = torch.randn(1, 1, 3, h, h, generator=gen) * 0.05
            own = torch.randn(1, 12, 3, h, h, generator=gen) * 0.05
            out.append((hr[:, None] + shared + own, hr))
        return out

    train, test = pool(5, 3, 4), pool(10, 4, 16)
    reg = fit("blend_reg", train, experts=_fps(12), border=0)
    free = fit("blend", train, experts=_fps(12), border=0)
    mean = fit("mean", [], experts=_fps(12))

    def mse(ens):
        return sum(float((rgb_to_y(apply(ens, s)) - rgb_to_y(h)).square().mean()) for s, h in test)

    assert mse(reg) < 0.97 * mse(free)
    assert mse(reg) < 1.02 * mse(mean)


def test_blend_reg_candidates_include_the_simplex_and_cv_scores_every_form():
    from pipeline.inference.ensemblers.blends import _per_image_stats, blend_reg_candidates, cross_validate_blends

    stats = _per_image_stats((srs, hr) for srs, hr in _noisy_pool(6))
    scores = cross_validate_blends(stats)
    assert set(scores) == {label for label, _ in blend_reg_candidates()} and "simplex" in scores
    w = dict(blend_reg_candidates())["simplex"](stats[0])
    assert float(w.min()) >= 0 and abs(float(w.sum()) - 1) < 1e-9


@pytest.mark.parametrize("method", ["topk", "blend_reg"])
def test_fixed_weight_methods_round_trip(tmp_path, method):
    ens = fit(method, _noisy_pool(3), experts=_fps(5), border=0)
    back = load(save(ens, tmp_path / "w.json"), experts=_fps(5))
    assert back.method == method and torch.equal(back.weights, ens.weights)
