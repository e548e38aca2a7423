"""scripts/train_expert.py and its parts: tiny HAT / DAT / NAFNetSR runs, learning, bit-exact resume, strict params,
checkpoints and exports that the expert loader and ensemble load back exactly, fine-tuning, NAFNetSR detection,
the patch dataset (LR folders, small images, image cache)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import spandrel
import torch
import yaml
from conftest import assert_close, program, read_metrics, run_main
from safetensors.torch import load_file

from experts.architectures import architecture_class, build_architecture, check_params, loader_round_trip
from experts.archs import NAFNetSR
from experts.ensemble import ExpertEnsemble
from experts.expert import load_expert
from experts.loading import ExpertLoadError
from experts.spec import ExpertSpec, load_ensemble_spec
from experts.zoo import load_expert_model, read_expert_config
from pipeline.core.config import ConfigError
from pipeline.core.imageio import write_image
from pipeline.core.resize import make_lr
from pipeline.training.checkpoint import load_train_state, resolve_checkpoint
from pipeline.training.expert.config import load_expert_run_config
from pipeline.training.expert.export import export_expert
from pipeline.training.patch_data import SRPatchDataset
from pipeline.training.runs import RunError

train_expert = program("train_expert")

TINY = {
    "NAFNetSR": {"width": 8, "num_blocks": 2, "upscale": 4},
    "HAT": {
        "embed_dim": 16,
        "depths": [1],
        "num_heads": [2],
        "window_size": 8,
        "compress_ratio": 4,
        "squeeze_factor": 8,
        "mlp_ratio": 2.0,
        "upscale": 4,
        "num_feat": 16,
    },
    "DAT": {
        "embed_dim": 32,
        "split_size": [2, 4],
        "depth": [2],
        "num_heads": [2],
        "expansion_factor": 2.0,
        "upscale": 4,
        "upsampler": "pixelshuffledirect",
    },
}


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Smooth photo-like HR images: 4 for training (80×80), 2 for validation (48×40)."""
    root = tmp_path_factory.mktemp("expert_data")
    gen = torch.Generator().manual_seed(0)
    for folder, n, size in (("train", 4, (80, 80)), ("val/HR", 2, (48, 40))):
        for i in range(n):
            base = torch.rand(1, 3, 10, 10, generator=gen)
            img = torch.nn.functional.interpolate(base, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            write_image(root / folder / f"img{i}.png", img)
    return {"train": root / "train", "val": root / "val" / "HR"}


def _config(
    tmp_path: Path,
    images: dict,
    arch: str,
    *,
    name: str = "tiny",
    data: dict | None = None,
    model: dict | None = None,
    **train,
) -> Path:
    cfg = {
        "model": {"architecture": arch, "params": TINY[arch], **(model or {})},
        "data": {
            "train_hr": [str(images["train"])],
            "val_hr": [str(images["val"])],
            "patch": 16,
            "batch_size": 2,
            **(data or {}),
        },
        "train": {
            "runs_dir": str(tmp_path / "runs"),
            "name": name,
            "steps": 3,
            "warmup_steps": 1,
            "lr": 2e-3,
            "log_every": 1,
            "val_every": 3,
            "ckpt_every": 3,
            "ema_decay": 0.9,
            "threads": 1,
            **train,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ema_model(ckpt: Path) -> torch.nn.Module:
    """The EMA weights of the train state, in a model rebuilt from the checkpoint's config.json."""
    model = load_expert_model(ckpt)
    ema = {k[len("module.") :]: v for k, v in load_train_state(ckpt)["ema"].items() if k.startswith("module.")}
    model.load_state_dict(ema, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["HAT", "DAT", "NAFNetSR"])
def test_tiny_run_saves_checkpoints_the_expert_loader_reads(arch, images, tmp_path):
    assert run_main(train_expert.main, [str(_config(tmp_path, images, arch))]) == 0
    run = tmp_path / "runs" / "tiny"
    log = read_metrics(run)
    assert [s for s, _ in log["train/loss"]] == [1, 2, 3]
    assert log["val/psnr"] == log["val/psnr_val"] and len(log["val/bicubic_val"]) == 1  # set named after HR/'s parent
    ckpt = resolve_checkpoint(run)
    assert ckpt.name == "step_00000003" and (run / "ckpt" / "best").is_symlink()
    cfg = read_expert_config(ckpt)
    assert cfg["architecture"] == arch and cfg["params"] == TINY[arch] and cfg["scale"] == 4
    assert cfg["extra"]["val_psnr"] == pytest.approx(log["val/psnr"][-1][1], abs=1e-6)
    # model.safetensors holds the EMA weights ...
    weights = load_file(str(ckpt / "model.safetensors"))
    ema = _ema_model(ckpt)
    assert all(torch.equal(weights[k], v) for k, v in ema.state_dict().items())
    # ... and is an ordinary checkpoint for the expert loader: same architecture, hyper-parameters, outputs
    spec = ExpertSpec(
        name="e",
        checkpoint=str(ckpt / "model.safetensors"),
        architecture=arch,
        scale=4,
        expect=cfg["expect"],
        min_probe_psnr=0,  # a few training steps: not yet close to a bicubic upscale
    )
    expert = load_expert(spec)
    lr = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        assert_close(expert.run(lr)[0], ema(lr).clamp(0, 1))


def test_loss_falls_on_a_learnable_case(images, tmp_path):
    cfg = _config(
        tmp_path,
        images,
        "HAT",
        steps=30,
        val_every=1000,
        ckpt_every=1000,
        lr=3e-3,
        warmup_steps=3,
        data={"augment": False},
    )
    assert run_main(train_expert.main, [str(cfg)]) == 0
    losses = [v for _, v in read_metrics(tmp_path / "runs" / "tiny")["train/loss"]]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_resume_is_bit_identical(images, tmp_path):
    # two HAT blocks keep HAT's default drop_path_rate 0.1 (stochastic depth 0.1 on the second block): the training
    # forward draws from the global RNG, so its state (and the data stream, the optimiser and EMA) must be restored
    common = {"steps": 8, "ckpt_every": 4, "val_every": 4, "log_every": 2}
    hat2 = {"params": dict(TINY["HAT"], depths=[2])}
    assert run_main(train_expert.main, [str(_config(tmp_path, images, "HAT", name="ref", model=hat2, **common))]) == 0
    reference = load_file(str(resolve_checkpoint(tmp_path / "runs" / "ref") / "model.safetensors"))

    assert run_main(train_expert.main, [str(_config(tmp_path, images, "HAT", name="cut", model=hat2, **common))]) == 0
    run = tmp_path / "runs" / "cut"
    # pretend the run died right after its step-4 checkpoint
    last = run / "ckpt" / "last"
    last.unlink()
    os.symlink("step_00000004", last)
    shutil.rmtree(run / "ckpt" / "step_00000008")
    assert resolve_checkpoint(run).name == "step_00000004"
    # how often it validates may change on resume (RESUME_MAY_CHANGE); the config.yaml then says so
    assert run_main(train_expert.main, ["--resume", str(run), "train.val_every=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["val_every"] == 2
    assert [s for s, _ in read_metrics(run)["val/psnr"]] == [4, 6, 8]
    resumed = load_file(str(resolve_checkpoint(run) / "model.safetensors"))
    assert resolve_checkpoint(run).name == "step_00000008" and resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    raw_ref = load_train_state(resolve_checkpoint(tmp_path / "runs" / "ref"))["model"]
    raw = load_train_state(resolve_checkpoint(run))["model"]
    assert all(torch.equal(raw[k], raw_ref[k]) for k in raw_ref)
    steps = [s for s, _ in read_metrics(run)["train/loss"]]
    assert steps == [2, 4, 6, 8]  # no duplicated rows after the resume
    with pytest.raises(RunError, match=r"config differs.*train\.lr: run has 0\.002, now 0\.1 \(only train\.threads"):
        run_main(train_expert.main, ["--resume", str(run), "train.lr=0.1", "train.threads=1"], debug=True)


def test_unknown_or_mistyped_params_are_errors(images, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown parameter\(s\) \['embed_dimm'\] for HAT; its constructor takes "
        r"\[.*'embed_dim'.*\]",
    ):
        load_expert_run_config(
            None, ["model.architecture=HAT", "model.params={embed_dimm: 16}", f"data.train_hr=[{images['train']}]"]
        )
    with pytest.raises(ConfigError, match=r"model\.params\.depths\[1\]: expected int, got 'a'"):
        check_params(architecture_class("HAT"), {"depths": [2, "a"]})
    with pytest.raises(ConfigError, match="norm_layer: its default is the Python object"):
        build_architecture("HAT", {"norm_layer": "LayerNorm"})
    with pytest.raises(ConfigError, match=r"unknown architecture 'NoSuchNet'.*'NAFNetSR'"):
        build_architecture("NoSuchNet", {})
    with pytest.raises(ConfigError, match=r"width: expected int, got 8\.5"):
        build_architecture("NAFNetSR", {"width": 8.5})
    # the command line says so before creating anything
    cfg = _config(tmp_path, images, "NAFNetSR", model={"params": {"width": 8, "blocks": 2}})
    with pytest.raises(RunError, match=r"config error: .*unknown parameter\(s\) \['blocks'\]"):
        run_main(train_expert.main, [str(cfg)], debug=True)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_params_the_loader_cannot_recover_are_refused(images, tmp_path):
    # conv_scale changes HAT's output but cannot be read from the weights: the expert loader would rebuild another
    # model, so training refuses to start
    params = dict(TINY["HAT"], conv_scale=0.05)
    with pytest.raises(ConfigError, match=r"conv_scale.*\(0\.05, 0\.01\).*changes the output"):
        loader_round_trip(build_architecture("HAT", params), architecture="HAT", params=params, scale=4)
    # a train-time-only argument is fine, and left out of `expect`
    params = dict(TINY["HAT"], drop_path_rate=0.0)
    _, expect = loader_round_trip(build_architecture("HAT", params), architecture="HAT", params=params, scale=4)
    assert "drop_path_rate" not in expect and expect["embed_dim"] == 16
    with pytest.raises(ConfigError, match="the model is x2, the spec expects x4"):
        loader_round_trip(
            build_architecture("NAFNetSR", {"width": 8, "num_blocks": 1, "upscale": 2}),
            architecture="NAFNetSR",
            params={},
            scale=4,
        )


@pytest.mark.parametrize("arch", ["NAFNetSR", "HAT"])
def test_export_loads_through_the_ensemble_and_reproduces_the_model(arch, images, tmp_path):
    cfg = _config(tmp_path, images, arch, steps=2, val_every=2, ckpt_every=2)
    out = tmp_path / "zoo" / f"{arch.lower()}_tiny"
    assert run_main(train_expert.main, [str(cfg), "--export", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "expert.yaml", "model.safetensors"]
    ckpt = resolve_checkpoint(tmp_path / "runs" / "tiny")
    trained = _ema_model(ckpt)
    zoo_cfg = read_expert_config(out)
    assert zoo_cfg["architecture"] == arch and zoo_cfg["params"] == TINY[arch] and zoo_cfg["extra"]["step"] == 2
    assert load_file(str(out / "model.safetensors")).keys() == trained.state_dict().keys()

    spec = yaml.safe_load((out / "expert.yaml").read_text())
    assert spec["experts"][0]["architecture"] == arch and len(spec["experts"][0]["sha256"]) == 64
    # the loader's probe, as the card says: NAFNetSR starts as the bicubic upscale (its bicubic skip, last conv at
    # zero) and passes after two steps; HAT two steps from random weights is far from an SR model and is refused
    card = (out / "MODEL_CARD.md").read_text()
    if arch == "NAFNetSR":
        assert "— passes" in card
        ExpertEnsemble.from_yaml(out / "expert.yaml")
    else:
        assert "`min_probe_psnr` 40 dB — below it: loading `expert.yaml` refuses this expert" in card
        with pytest.raises(ExpertLoadError, match="fails the probe"):
            ExpertEnsemble.from_yaml(out / "expert.yaml")
    loaded = load_ensemble_spec(out / "expert.yaml")
    ens = ExpertEnsemble.from_spec(
        dataclasses.replace(loaded, experts=(dataclasses.replace(loaded.experts[0], min_probe_psnr=0),))
    )
    lr = torch.rand(2, 3, 16, 24)
    srs, feats = ens(lr)
    with torch.no_grad():
        assert_close(srs[:, 0], trained(lr).clamp(0, 1))
    assert feats[0].shape[-2:] == (16, 24)  # default hook conv_after_body, on the LR grid

    psnr = read_metrics(tmp_path / "runs" / "tiny")["val/psnr"][-1][1]
    assert f"| val (`{images['val']}`) | 2 | {psnr:.3f} |" in card  # measured through the loader = training's number
    assert "2 steps × batch 2 of 16×16 LR crops" in card and f"{arch}" in card

    # a finished run exports again without training (--resume of a complete run runs no step)
    again = tmp_path / "zoo" / "again"
    assert (
        run_main(
            train_expert.main,
            ["--resume", str(tmp_path / "runs" / "tiny"), "--export", str(again), "--export-which", "best"],
        )
        == 0
    )
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_fine_tuning(images, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    cfg = _config(tmp_path, images, "NAFNetSR", name="ft", model={"init_from": str(missing)})
    with pytest.raises(RunError, match=f"model.init_from={missing}: no such file or folder"):
        run_main(train_expert.main, [str(cfg)], debug=True)
    missing_dir = tmp_path / "empty_run"
    missing_dir.mkdir()
    cfg = _config(tmp_path, images, "NAFNetSR", name="ft2", model={"init_from": str(missing_dir)})
    with pytest.raises(RunError, match=f"no model.safetensors in {missing_dir}"):
        run_main(train_expert.main, [str(cfg)], debug=True)

    # from a finished run (its last checkpoint), with lr 0: the fine-tuned weights are the starting ones
    assert run_main(train_expert.main, [str(_config(tmp_path, images, "NAFNetSR", name="base"))]) == 0
    base = load_file(str(resolve_checkpoint(tmp_path / "runs" / "base") / "model.safetensors"))
    cfg = _config(
        tmp_path,
        images,
        "NAFNetSR",
        name="ft3",
        model={"init_from": str(tmp_path / "runs" / "base")},
        lr=0.0,
        steps=1,
        val_every=1,
        ckpt_every=1,
        warmup_steps=0,
    )
    assert run_main(train_expert.main, [str(cfg)]) == 0
    tuned = load_file(str(resolve_checkpoint(tmp_path / "runs" / "ft3") / "model.safetensors"))
    assert all(torch.equal(tuned[k], base[k]) for k in base)
    # weights of another shape: an error naming the file and the mismatching tensors
    cfg = _config(
        tmp_path,
        images,
        "NAFNetSR",
        name="ft4",
        model={"init_from": str(tmp_path / "runs" / "base"), "params": {"width": 12, "num_blocks": 2}},
    )
    with pytest.raises(
        RunError,
        match=r"cannot fine-tune: .*model\.safetensors: the weights do not fit NAFNetSR.*"
        r"shape mismatches",
    ):
        run_main(train_expert.main, [str(cfg)], debug=True)


def test_fine_tuned_exports_keep_their_whole_training_history(images, tmp_path):
    """Exporting a fine-tuned expert over the export it started from (the zoo workflow) records every stage; weights
    from elsewhere or changed since are said to be so, never guessed."""
    zoo = tmp_path / "zoo" / "e"

    def stage(name: str, init: Path | None, steps: int, out: Path = zoo) -> dict:
        cfg = _config(
            tmp_path,
            images,
            "NAFNetSR",
            name=name,
            steps=steps,
            val_every=steps,
            ckpt_every=steps,
            model={"init_from": str(init)} if init else None,
        )
        assert run_main(train_expert.main, [str(cfg), "--export", str(out)]) == 0
        return read_expert_config(out)["extra"]

    assert stage("scratch", None, 2)["history"] == []
    second = stage("ft1", zoo, 1)  # reads zoo/e before overwriting it
    assert [h["run"] for h in second["history"]] == ["scratch"] and second["history"][0]["init_from"] is None
    third = stage("ft2", zoo, 1)
    assert [h["run"] for h in third["history"]] == ["scratch", "ft1"]
    card = (zoo / "MODEL_CARD.md").read_text()
    assert "3 stages, each fine-tuning the previous one's exported EMA weights (4 steps in all)" in card
    assert "Stage 1 — run `scratch`:" in card and "Stage 3 — run `ft2` (this export):" in card
    assert card.count("- initialised from: random (trained from scratch)") == 1
    assert card.count(f"- initialised from: `{zoo / 'model.safetensors'}`") == 2

    # outside weights (a plain file with no config.json beside it)
    plain = tmp_path / "plain" / "w.safetensors"
    plain.parent.mkdir()
    shutil.copy(zoo / "model.safetensors", plain)
    ext = stage("ft_ext", plain, 1, out=tmp_path / "zoo" / "ext")
    assert ext["history"] == [{"external": str(plain), "sha256": ext["init_from"]["sha256"]}]
    assert "started from outside weights" in (tmp_path / "zoo" / "ext" / "MODEL_CARD.md").read_text()

    # starting weights replaced between the run and its export: said so, not guessed
    cfg = _config(
        tmp_path,
        images,
        "NAFNetSR",
        name="ft_late",
        steps=1,
        val_every=1,
        ckpt_every=1,
        model={"init_from": str(plain)},
    )
    assert run_main(train_expert.main, [str(cfg)]) == 0
    plain.write_bytes((tmp_path / "zoo" / "ext" / "model.safetensors").read_bytes())
    late = export_expert(tmp_path / "runs" / "ft_late", tmp_path / "zoo" / "late")
    history = read_expert_config(late)["extra"]["history"]
    assert history[0]["why"] == "the file changed since the run started from it"
    assert "whose own training is not recorded here" in (late / "MODEL_CARD.md").read_text()


def test_nafnet_sr_is_detected_with_every_hyperparameter(tmp_path):
    params = {"channels": 3, "width": 12, "num_blocks": 3, "dw_expand": 1, "ffn_expand": 3, "upscale": 2}
    model = NAFNetSR(**params)
    lr = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert model(lr).shape == (1, 3, 18, 22)
    path = tmp_path / "nafsr.pth"
    torch.save(model.state_dict(), path)
    expert = load_expert(
        ExpertSpec(name="n", checkpoint=str(path), architecture="NAFNetSR", scale=2, expect=params, min_probe_psnr=0),
        ensemble_scale=2,
    )
    assert expert.fingerprint.hyperparameters == params and expert.hook_layers == ("conv_after_body",)
    assert expert.feature_channels == 12
    with torch.no_grad():
        assert_close(expert.run(lr)[0], model(lr).clamp(0, 1))
    assert "NAFNetSR" not in spandrel.MAIN_REGISTRY  # the project's registry is a copy; spandrel's is untouched
    fresh = NAFNetSR(width=8, num_blocks=1)  # zero-initialised tail: a fresh model is the bicubic upscale
    with torch.no_grad():
        up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
        assert torch.equal(fresh(lr), up)


def test_patch_dataset_lr_folders_small_images_and_cache(images, tmp_path):
    from pipeline.core.imageio import list_images, read_image

    lr_dir = tmp_path / "lr"
    for p in list_images(images["train"]):
        write_image(lr_dir / f"{p.stem}x4.png", make_lr(read_image(p), 4)[1])
    ds = SRPatchDataset([images["train"]], lr_dirs=[lr_dir], patch=8, seed=3)
    item = ds[5]
    assert item["lr"].shape == (3, 8, 8) and item["hr"].shape == (3, 32, 32)
    assert torch.equal(ds[5]["hr"], item["hr"])  # a pure function of the index
    cached = SRPatchDataset([images["train"]], lr_dirs=[lr_dir], patch=8, seed=3, cache_images=True)
    for i in range(6):
        assert torch.equal(cached[i]["lr"], ds[i]["lr"]) and torch.equal(cached[i]["hr"], ds[i]["hr"])
    (lr_dir / "img0x4.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no LR image for 1 HR image\(s\).*img0\.png"):
        SRPatchDataset([images["train"]], lr_dirs=[lr_dir], patch=8)
    # validation images (48×40) are smaller than a 64-pixel HR patch
    with pytest.raises(ValueError, match=r"2 image\(s\) are smaller than the HR patch 64x64.*skip_small"):
        SRPatchDataset([images["train"], images["val"]], patch=16)
    ds = SRPatchDataset([images["train"], images["val"]], patch=16, skip_small=True)
    assert len(ds) == 4 and [p.name for p in ds.skipped] == ["img0.png", "img1.png"]


def test_shipped_training_configs_are_small_and_match_the_zoo_yaml():
    """configs/experts/train/*.yaml build 100K–400K-parameter models the loader round-trips, and
    configs/experts/zoo_small.yaml expects exactly what their exports will hold."""
    from experts.spec import load_ensemble_spec

    repo = Path(__file__).resolve().parents[1]
    zoo = load_ensemble_spec(repo / "configs" / "experts" / "zoo_small.yaml")
    for name in ("hat_s", "dat_s", "nafnet_sr"):
        cfg = load_expert_run_config(repo / "configs" / "experts" / "train" / f"{name}.yaml")
        model = build_architecture(cfg.model.architecture, cfg.model.params)
        assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 400_000, name
        _, expect = loader_round_trip(model, architecture=cfg.model.architecture, params=cfg.model.params, scale=4)
        entry = zoo.by_name(cfg.train.name)
        # paths in a YAML are relative to its folder: absolute once loaded
        assert Path(entry.checkpoint) == repo / "experts" / "zoo" / cfg.train.name / "model.safetensors"
        assert entry.architecture == cfg.model.architecture
        assert json.loads(json.dumps(dict(entry.expect))) == expect
