"""Training the fusion network on the HDF5 cache (or on live experts): the library behind ``train.py``.

Plain functions, top to bottom: data → model → validation → :func:`train` (the shared loop skeleton,
pipeline/training/loop.py :class:`TrainLoop`).

* ``data.mode=cached`` (default) reads random aligned crops from the HDF5 cache (cache/extract.py);
  ``data.mode=live`` runs the frozen experts on every batch instead (slow; for comparison or when no cache exists).
* AdamW, linear warm-up + cosine decay, gradient clipping, EMA of the weights (validation and saved models use the
  EMA), bf16 autocast on CUDA (fp32 on CPU), multi-stage loss schedule (``train.stages``).
* Validation: full images of ``data.val_cache``, scored like the challenge, next to every expert and their mean.
* ``train.init_from=DIR`` fine-tunes a trained fusion: same network config and same experts (names + sha256).
* Under torchrun: DistributedDataParallel; only rank 0 validates, logs and saves.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cache.batch_loader import SlotLoader
from cache.dataset import CachedFullImageDataset, CachedSRDataset, CropBatches, finish_batch
from cache.schema import SCHEMA_VERSION, CacheLayout, describe_layout_shortfall
from experts.spec import portable_path
from pipeline.core.config import config_to_dict
from pipeline.core.distributed import setup_distributed
from pipeline.core.imageio import quantize_8bit
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.model.fusion_config import FusionConfig
from pipeline.model.fusion_net import FusionNet
from pipeline.training.checkpoint import load_train_state, remove_stale_temps, resolve_checkpoint, save_checkpoint
from pipeline.training.config import RunConfig, StageConfig
from pipeline.training.ema import ModelEma
from pipeline.training.loop import StepResult, TrainLoop, Validation
from pipeline.training.losses import CombinedLoss, VGGPerceptualLoss
from pipeline.training.runs import RunError, config_differences
from pipeline.training.scalar_log import ScalarLog
from pipeline.training.steps import StepBatchSampler, guarded_step, pick_device, worker_init


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def build_data(cfg: RunConfig, *, start_step: int, rank: int, world: int, device: torch.device):
    """→ (train loader, val dataset or None, cache meta or None, live ensemble or None)."""
    d = cfg.data
    ensemble = None
    if d.mode == "cached":
        train_ds = CachedSRDataset(
            d.train_cache,
            patch=d.patch,
            repeat=d.repeat,
            augment=d.augment,
            seed=cfg.train.seed,
            skip_small=d.skip_small,
            images=d.images,
        )
        if train_ds.skipped and rank == 0:
            print(
                f"train: {len(train_ds.skipped)} training image(s) smaller than the {d.patch}px LR patch are left out "
                f"(data.skip_small): {', '.join(train_ds.skipped[:8])}{' ...' if len(train_ds.skipped) > 8 else ''}"
            )
        meta = train_ds.meta
        check_cache_layout(d.train_cache, meta.layout, cfg.model)
        if d.experts is not None:
            check_expert_files(d.experts, meta)
    else:
        from experts.ensemble import ExpertEnsemble
        from pipeline.training.live_data import LiveHRDataset

        ensemble = ExpertEnsemble.from_yaml(d.experts, gather_device=str(device), grad_mode="no_grad")
        train_ds = LiveHRDataset(
            d.train_hr, patch=d.patch, scale=ensemble.scale, augment=d.augment, seed=cfg.train.seed
        )
        meta = None
    val_ds = None
    if d.val_cache is not None and rank == 0:
        val_ds = CachedFullImageDataset(d.val_cache, expect=meta)
        check_cache_layout(d.val_cache, val_ds.reader.layout, cfg.model)
    sampler = StepBatchSampler(
        start_step=start_step, steps=cfg.train.steps, batch_size=d.batch_size, rank=rank, world=world
    )
    if d.mode == "cached":  # whole batches cut from RAM into reused shared slots (page-locked on CUDA)
        loader = SlotLoader(
            CropBatches(train_ds, ram_budget_bytes=int(d.ram_budget_gb * 2**30), workers=d.num_workers),
            sampler=sampler,
            batch_size=d.batch_size,
            workers=d.num_workers,
            pin=device.type == "cuda",
        )
    else:
        loader = DataLoader(
            train_ds,
            batch_sampler=sampler,
            num_workers=d.num_workers,
            worker_init_fn=worker_init,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
    return loader, val_ds, meta, ensemble


def check_cache_layout(path: str, layout: CacheLayout, model: FusionConfig) -> None:
    """The cache at ``path`` must hold what the fusion reads (``model.inputs``): else a :class:`RunError` naming
    the cache's layout and the fusion's setting."""
    problems = describe_layout_shortfall(layout, reads_features=model.inputs.features, sr_dtype=model.inputs.sr_dtype)
    if problems:
        raise RunError(f"{path} ({layout.describe()}) cannot feed this fusion: {'; '.join(problems)}")


def check_expert_files(experts_yaml: str, meta) -> None:
    """Cached mode with ``data.experts`` set: the YAML's checkpoints must be the files the cache was made with."""
    from experts.loading import sha256_file
    from experts.spec import load_ensemble_spec
    from experts.spec import resolve_expert_checkpoint as resolve_ckpt

    spec = load_ensemble_spec(experts_yaml)
    names = [e.name for e in spec.experts]
    if tuple(names) != meta.expert_names:
        raise RunError(f"data.experts lists {names}, the cache was made with {list(meta.expert_names)}")
    for e, fp in zip(spec.experts, meta.experts):
        digest = sha256_file(resolve_ckpt(e))
        if digest != fp["sha256"]:
            raise RunError(
                f"expert {e.name}: {resolve_ckpt(e)} (sha256 {digest[:12]}…) is not the checkpoint the "
                f"cache was made with (sha256 {fp['sha256'][:12]}…)"
            )


def batch_inputs(batch: dict, ensemble, device: torch.device, *, loader=None):
    """→ lr (B,3,h,w), hr (B,3,sh,sw), srs (B,E,3,sh,sw), feats [E × (B,C_e,h,w)] on ``device``; a batch of the
    cached loader (a :class:`SlotLoader`) is finished on the device (float, augmented: :func:`finish_batch`)."""
    if isinstance(loader, SlotLoader):
        out = finish_batch(
            batch, device=device, feat_channels=loader.dataset.meta.feature_channels, non_blocking=loader.pinned
        )
        if loader.pinned:  # the slot is refilled once the next batch is asked for: its copies must be done
            torch.cuda.current_stream(device).synchronize()
        return out["lr"], out["hr"], out["srs"], out["feats"]
    lr = batch["lr"].to(device, non_blocking=True)
    hr = batch["hr"].to(device, non_blocking=True)
    if ensemble is None:
        srs = batch["srs"].to(device, non_blocking=True)
        feats = [f.to(device, non_blocking=True) for f in batch["feats"]]
    else:
        srs, feats = ensemble(lr)
        srs, feats = srs.to(device), [f.to(device) for f in feats]
    return lr, hr, srs, feats


# ---------------------------------------------------------------------------------------------------------------------
# model, optimiser, schedule
# ---------------------------------------------------------------------------------------------------------------------
def build_model(cfg: RunConfig, meta, ensemble) -> FusionNet:
    channels = meta.feature_channels if meta is not None else ensemble.feature_channels
    model_cfg = cfg.model
    if tuple(model_cfg.inputs.feat_channels) != tuple(channels):
        print(
            f"train: model.inputs.feat_channels {list(model_cfg.inputs.feat_channels)} replaced by the experts' "
            f"{list(channels)} (from the {'cache' if meta is not None else 'expert'} fingerprints)"
        )
        model_cfg = model_cfg.with_feat_channels(channels)
    return FusionNet(config=model_cfg)


def load_init_weights(model: FusionNet, init_from: str, experts: list[dict]) -> Path:
    """``train.init_from``: copy a trained fusion's weights into ``model`` (fine-tuning). The checkpoint must describe
    the same network and have been trained on the same experts (names and checkpoint sha256) → its directory."""
    from pipeline.model.io import load_pretrained, read_extra, verify_checksums

    ckpt = resolve_checkpoint(init_from, which="best")
    if (ckpt / "SHA256SUMS").is_file():
        verify_checksums(ckpt)
    init = load_pretrained(ckpt)
    if init.config.set_gate.members > 1:  # a training run is one gate; its members are runs of their own
        sources = [m.get("source") for m in read_extra(ckpt).get("members", [])]
        raise RunError(
            f"train.init_from {ckpt} is a stack of {init.config.set_gate.members} set gates (sr-fusion stack-gates): "
            f"fine-tune one of its members ({', '.join(map(str, sources)) or 'see extra.members'}) and stack again"
        )
    diffs = config_differences({"model": config_to_dict(init.config)}, {"model": config_to_dict(model.config)})
    if diffs:  # "run has" = the checkpoint's value, "now" = this config's
        raise RunError("train.init_from describes another network: " + "; ".join(diffs[:8]) + f" (run = {ckpt})")
    recorded = [(fp["name"], fp["sha256"]) for fp in read_extra(ckpt)["experts"]]
    here = [(fp["name"], fp["sha256"]) for fp in experts]
    if recorded != here:
        raise RunError(
            f"train.init_from {ckpt} was trained on experts "
            f"{[f'{n} ({h[:12]}…)' for n, h in recorded]}, this run has {[f'{n} ({h[:12]}…)' for n, h in here]}"
        )
    model.load_state_dict(init.state_dict(), strict=True)
    return ckpt


def compiled_forward(module: torch.nn.Module, *, enabled: bool, prog: str):
    """``module``'s forward, ``torch.compile``-d when ``enabled``. Compiling happens on the first call; if it fails
    (no compiler, an unsupported op) that call and every later one run eagerly, after one printed line — only the
    first call falls back, so a genuine error of a later step is raised as usual."""
    if not enabled:
        return module
    try:
        compiled = torch.compile(module)
    except Exception as exc:  # noqa: BLE001 - e.g. a torch build without dynamo support
        print(f"{prog}: train.compile: torch.compile unavailable ({type(exc).__name__}: {exc}); training eagerly")
        return module
    state = {"first": True, "fn": compiled}

    def forward(*args):
        if not state["first"]:
            return state["fn"](*args)
        state["first"] = False
        try:
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager is always correct
            msg = " ".join(str(exc).split())[:200]
            print(f"{prog}: train.compile: compiling failed ({type(exc).__name__}: {msg}); training eagerly")
            state["fn"] = module
            return module(*args)

    return forward


def stage_at(step: int, stages: tuple[StageConfig, ...]) -> StageConfig:
    for s in stages:
        if step < s.until_step:
            return s
    return stages[-1]


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: FusionNet, val_ds, device: torch.device, expert_names, baseline: dict | None):
    """Full-image fusion on the validation cache, scored like the challenge (8-bit output, Y channel, border=scale),
    side by side with every expert and the experts' mean on the same images (computed once: ``baseline``)."""
    model.eval()
    s = val_ds.reader.scale
    fused_p, fused_s, gates = [], [], []
    base = {"mean": [], **{n: [] for n in expert_names}} if baseline is None else None
    for i in range(len(val_ds)):
        item = val_ds[i]
        if "hr" not in item:
            raise RunError(f"{val_ds.reader.path}: validation needs HR images (re-extract with --hr)")
        lr, hr, srs = item["lr"][None].to(device), item["hr"][None].to(device), item["srs"][None].to(device)
        feats = [f[None].to(device) for f in item["feats"]]
        out = model.forward_with_precomputed(lr, srs, feats)
        sr = quantize_8bit(out.sr.float())
        fused_p.append(float(psnr_y(sr, hr, crop_border=s)[0]))
        fused_s.append(float(ssim_y(sr, hr, crop_border=s)[0]))
        gates.append(out.gates.float().mean(dim=(0, 2, 3)).cpu())
        if base is not None:
            for j, n in enumerate(expert_names):
                base[n].append(float(psnr_y(quantize_8bit(srs[:, j]), hr, crop_border=s)[0]))
            base["mean"].append(float(psnr_y(quantize_8bit(srs.mean(dim=1)), hr, crop_border=s)[0]))
    if base is not None:
        baseline = {k: sum(v) / len(v) for k, v in base.items()}
    gate_mean = torch.stack(gates).mean(dim=0)
    result = {"val/psnr": sum(fused_p) / len(fused_p), "val/ssim": sum(fused_s) / len(fused_s)}
    result.update({f"val/gate_{n}": float(g) for n, g in zip(expert_names, gate_mean)})
    return result, baseline


# ---------------------------------------------------------------------------------------------------------------------
# resume checks
# ---------------------------------------------------------------------------------------------------------------------
def cache_signature(meta, loader) -> dict:
    ds = loader.dataset
    if meta is None:
        return {"mode": "live", "files": [p.name for p in ds.files]}
    return {
        "mode": "cached",
        "schema_version": SCHEMA_VERSION,
        "scale": meta.scale,
        "lr_method": meta.lr_method,
        "experts": list(meta.experts),
        "images": ds.reader.names,
    }


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------
def train(cfg: RunConfig, run_dir: Path, *, resume: bool) -> dict:
    """Train (``resume``: continue) the fusion run in ``run_dir`` → summary (final step, best validation PSNR,
    non-finite steps, the experts' validation scores)."""
    rank, world, local_rank = setup_distributed()
    device = pick_device(cfg.train.device, local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    ckpt_root = run_dir / "ckpt"
    if rank == 0:
        remove_stale_temps(ckpt_root)  # what a killed run left (unfinished checkpoint dirs, .last.tmp-PID links)

    state = load_train_state(resolve_checkpoint(run_dir)) if resume else None
    start_step = int(state["step"]) if state is not None else 0
    loader, val_ds, meta, ensemble = build_data(cfg, start_step=start_step, rank=rank, world=world, device=device)
    signature = cache_signature(meta, loader)
    if state is not None:
        diffs = config_differences(state["cache"], signature)
        if diffs:
            raise RunError("cannot resume, the training data differ from the run's: " + "; ".join(diffs[:8]))

    model = build_model(cfg, meta, ensemble)
    experts_fp = list(meta.experts) if meta is not None else [fp.to_dict() for fp in ensemble.fingerprints]
    if cfg.train.init_from is not None and state is None:
        src = load_init_weights(model, cfg.train.init_from, experts_fp)
        if rank == 0:
            print(f"train: weights initialised from {src}")
    model = model.to(device)
    if cfg.train.channels_last:  # before the EMA copies it and a resume loads into it
        model = model.to(memory_format=torch.channels_last)
    expert_names = meta.expert_names if meta is not None else ensemble.names
    t = cfg.train
    loop = TrainLoop(
        prog="train",
        model=model,
        ema=ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup),
        optimizer=torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay),
        train=t,
        ckpt_root=ckpt_root,
        log=ScalarLog(run_dir, start_step=start_step) if rank == 0 else None,
        rank=rank,
        world=world,
    )
    if state is not None:
        loop.restore(state)
    train_model = DistributedDataParallel(model) if world > 1 else model
    forward = compiled_forward(train_model, enabled=t.compile, prog="train")
    vgg = VGGPerceptualLoss(weights_path=cfg.loss.vgg_weights).to(device) if cfg.loss.vgg_weights else None
    criterion = CombinedLoss(perceptual=vgg)
    use_bf16 = t.bf16 and device.type == "cuda"
    extra_base = {
        "experts": experts_fp,
        "cache": {  # informational; portable like the experts' paths (a checkpoint may be committed and cloned)
            "schema_version": SCHEMA_VERSION,
            "path": portable_path(cfg.data.train_cache) if meta is not None else None,
        },
        "run": run_dir.name,
        "scale": meta.scale if meta is not None else ensemble.scale,
        "submission": config_to_dict(cfg.submission),
    }
    stage: StageConfig | None = None
    baseline: dict | None = None

    def step(batch: dict, s: int) -> StepResult:
        nonlocal stage
        new_stage = stage_at(s, t.stages)
        if new_stage is not stage:
            stage = new_stage
            if rank == 0:
                tqdm.write(
                    f"train: step {s}: loss stage {stage.name!r} (until step {stage.until_step}): "
                    f"{config_to_dict(stage.weights)}"
                )
        train_model.train()
        lr, hr, srs, feats = batch_inputs(batch, ensemble, device, loader=loader)
        if t.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = forward(lr, srs, feats)
        total, terms = criterion(
            out.sr.float(),
            hr,
            stage.weights,
            balance=out.load_balance_loss.float(),
            gates=None if out.gates is None else out.gates.float(),
            srs=srs,
        )
        ok = guarded_step(
            total, parameters=model.parameters(), optimizer=loop.optimizer, grad_clip=t.grad_clip, world=world
        )

        def scalars() -> dict[str, float]:
            g_mean = out.gates.detach().float().mean(dim=(0, 2, 3))
            return {
                **{f"train/{k}": v for k, v in terms.items()},
                **{f"train/gate_{n}": float(g) for n, g in zip(expert_names, g_mean)},
            }

        return StepResult(loss=total, ok=ok, scalars=scalars)

    def validate_step(s: int) -> Validation:
        nonlocal baseline
        metrics, baseline = validate(loop.ema.module, val_ds, device, expert_names, baseline)
        best_expert = max(expert_names, key=lambda n: baseline[n])
        metrics["val/gain_over_best_expert"] = metrics["val/psnr"] - baseline[best_expert]
        loop.log.log(s, {**metrics, **{f"val/expert_{k}": v for k, v in baseline.items()}})
        tqdm.write(
            f"train: step {s}: val PSNR fusion {metrics['val/psnr']:.3f} dB | "
            + " | ".join(f"{k} {v:.3f}" for k, v in baseline.items())
            + f" | gain over best expert ({best_expert}) {metrics['val/gain_over_best_expert']:+.3f} dB"
        )
        return Validation(psnr=metrics["val/psnr"], data=metrics)

    def save(s: int, val: Validation | None, is_best: bool) -> None:
        extra = dict(extra_base, stage=stage_at(s - 1, t.stages).name)
        if val is not None:
            extra.update(val_psnr=val.data["val/psnr"], val_ssim=val.data["val/ssim"])
        save_checkpoint(
            ckpt_root,
            step=s,
            ema_model=loop.ema.module,
            train_state=loop.state(s, {"cache": signature, "config": config_to_dict(cfg)}),
            extra=extra,
            is_best=is_best,
        )

    final = loop.run(
        loader, start_step=start_step, step=step, validate=validate_step if val_ds is not None else None, save=save
    )
    if loop.log is not None:
        loop.log.close()
    summary = {
        "step": final,
        "best_psnr": loop.counters["best_psnr"],
        "nonfinite_total": loop.counters["nonfinite_total"],
        "baseline": baseline,
    }
    if world > 1:
        dist.destroy_process_group()
    return summary
