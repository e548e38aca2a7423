"""Train the fusion network: ``python train.py CONFIG [dotted.overrides ...] [--resume runs/NAME]``.

Plain functions, top to bottom: config → data → model → optimiser → loop → checkpoints.

* ``data.mode=cached`` (default) reads random aligned crops from the HDF5 cache (scripts/extract_features.py);
  ``data.mode=live`` runs the frozen experts on every batch instead (slow; for comparison or when no cache exists).
* AdamW, linear warm-up + cosine decay, gradient clipping, EMA of the weights (validation and saved models use the
  EMA), bf16 autocast on CUDA (fp32 on CPU), multi-stage loss schedule (``train.stages``).
* A NaN/Inf loss or gradient skips the step and is counted; ``train.max_nonfinite`` in a row saves a checkpoint and
  aborts.
* ``runs/<name>/``: ``config.yaml`` (resolved), ``ckpt/step_*/`` with ``last``/``best`` links
  (pipeline/training/checkpoint.py), ``metrics.csv`` (every logged scalar), ``tb/`` (TensorBoard).
* ``--resume runs/<name>`` continues exactly (bit-identical on CPU): the data stream is a function of the step, and
  the optimiser, EMA, step and RNG state are restored; a different config or cache is refused, naming what differs.
* ``train.init_from=DIR`` fine-tunes a trained fusion (a checkpoint dir or a run dir's best checkpoint): same network
  config and same experts (names + sha256) as the checkpoint, else an error naming the difference.
* ``torchrun --nproc_per_node N train.py ...``: DistributedDataParallel (NCCL on GPUs, gloo on CPU); each rank takes
  ``data.batch_size`` crops per step (effective batch N × batch_size); only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cache.dataset import CachedFullImageDataset, CachedSRDataset
from cache.schema import SCHEMA_VERSION
from pipeline.core.cli import run_cli
from pipeline.core.config import config_to_dict
from pipeline.core.imageio import quantize_8bit
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.model.fusion_net import FusionNet
from pipeline.training.checkpoint import (
    load_train_state,
    prune_checkpoints,
    remove_stale_temps,
    resolve_checkpoint,
    save_checkpoint,
)
from pipeline.training.config import RunConfig, StageConfig, check_run_inputs, load_run_config
from pipeline.training.ema import ModelEma
from pipeline.training.loop import (
    RunError,
    ScalarLog,
    StepBatchSampler,
    config_differences,
    cosine_lr,
    count_nonfinite,
    guarded_step,
    pick_device,
    prepare_run,
    release_run,
    setup_distributed,
    worker_init,
)
from pipeline.training.losses import CombinedLoss, VGGPerceptualLoss

# (set-up, the step-keyed batch sampler, lr schedule, NaN guard, logging, run directories: pipeline/training/loop.py)


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
        )
        if train_ds.skipped and rank == 0:
            print(
                f"train: {len(train_ds.skipped)} training image(s) smaller than the {d.patch}px LR patch are left out "
                f"(data.skip_small): {', '.join(train_ds.skipped[:8])}{' ...' if len(train_ds.skipped) > 8 else ''}"
            )
        meta = train_ds.meta
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
    sampler = StepBatchSampler(
        start_step=start_step, steps=cfg.train.steps, batch_size=d.batch_size, rank=rank, world=world
    )
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        num_workers=d.num_workers,
        worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    return loader, val_ds, meta, ensemble


def check_expert_files(experts_yaml: str, meta) -> None:
    """Cached mode with ``data.experts`` set: the YAML's checkpoints must be the files the cache was made with."""
    from experts.loading import sha256_file
    from experts.spec import load_ensemble_spec
    from experts.spec import resolve_checkpoint as resolve_ckpt

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


def batch_inputs(batch: dict, ensemble, device: torch.device):
    """→ lr (B,3,h,w), hr (B,3,sh,sw), srs (B,E,3,sh,sw), feats [E × (B,C_e,h,w)] on ``device``."""
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


def lr_at(step: int, cfg: RunConfig) -> float:
    t = cfg.train
    return cosine_lr(step, lr=t.lr, steps=t.steps, warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)


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
# resume checks (ScalarLog, config_differences: pipeline/training/loop.py)
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
    expert_names = meta.expert_names if meta is not None else ensemble.names
    ema = ModelEma(model, decay=cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    counters = {"nonfinite_total": 0, "nonfinite_run": 0, "best_psnr": -math.inf}
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        ema.load_state_dict(state["ema"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        counters.update({k: state["counters"][k] for k in counters})
    train_model = DistributedDataParallel(model) if world > 1 else model
    vgg = VGGPerceptualLoss(weights_path=cfg.loss.vgg_weights).to(device) if cfg.loss.vgg_weights else None
    criterion = CombinedLoss(perceptual=vgg)
    use_bf16 = cfg.train.bf16 and device.type == "cuda"

    log = ScalarLog(run_dir, start_step=start_step) if rank == 0 else None
    baseline = None
    extra_base = {
        "experts": experts_fp,
        "cache": {"schema_version": SCHEMA_VERSION, "path": cfg.data.train_cache if meta is not None else None},
        "run": run_dir.name,
        "scale": meta.scale if meta is not None else ensemble.scale,
        "submission": config_to_dict(cfg.submission),
    }

    def train_state(step: int) -> dict:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "counters": dict(counters),
            "cache": signature,
            "config": config_to_dict(cfg),
        }

    def checkpoint(step: int, metrics: dict | None) -> None:
        if rank != 0:
            return
        is_best = metrics is not None and metrics["val/psnr"] > counters["best_psnr"]
        if is_best:
            counters["best_psnr"] = metrics["val/psnr"]
        extra = dict(extra_base, stage=stage_at(step - 1, cfg.train.stages).name)
        if metrics is not None:
            extra.update(val_psnr=metrics["val/psnr"], val_ssim=metrics["val/ssim"])
        save_checkpoint(
            ckpt_root,
            step=step,
            ema_model=ema.module,
            train_state=train_state(step),
            extra=extra,
            is_best=is_best or val_ds is None,
        )  # without validation, "best" is the latest
        prune_checkpoints(ckpt_root, keep_best=cfg.train.keep_best)

    stage = None
    bar = tqdm(
        total=cfg.train.steps, initial=start_step, desc="train", unit="step", disable=rank != 0, dynamic_ncols=True
    )
    t_last, steps_since = time.time(), 0
    step = start_step
    metrics = None
    for batch in loader:
        new_stage = stage_at(step, cfg.train.stages)
        if new_stage is not stage:
            stage = new_stage
            if rank == 0:
                tqdm.write(
                    f"train: step {step}: loss stage {stage.name!r} (until step {stage.until_step}): "
                    f"{config_to_dict(stage.weights)}"
                )
        lr_now = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        train_model.train()
        lr, hr, srs, feats = batch_inputs(batch, ensemble, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = train_model(lr, srs, feats)
        total, terms = criterion(
            out.sr.float(),
            hr,
            stage.weights,
            balance=out.load_balance_loss.float(),
            gates=None if out.gates is None else out.gates.float(),
            srs=srs,
        )
        ok = guarded_step(
            total, parameters=model.parameters(), optimizer=optimizer, grad_clip=cfg.train.grad_clip, world=world
        )
        count_nonfinite(counters, ok)
        if ok:
            ema.update(model)
        else:
            if rank == 0:
                tqdm.write(
                    f"train: step {step}: non-finite loss or gradient, step skipped "
                    f"({counters['nonfinite_run']} in a row, {counters['nonfinite_total']} in total)"
                )
            if counters["nonfinite_run"] >= cfg.train.max_nonfinite:
                checkpoint(step, None)
                raise RunError(
                    f"{counters['nonfinite_run']} non-finite steps in a row at step {step}: "
                    f"aborting (checkpoint saved to {ckpt_root / 'last'}); lower train.lr or check the data"
                )
        step += 1
        steps_since += 1
        bar.update(1)
        if rank == 0 and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
            now = time.time()
            scalars = {
                "train/loss": float(total.detach()),
                "train/lr": lr_now,
                "train/steps_per_s": steps_since / (now - t_last),
                "train/nonfinite_total": counters["nonfinite_total"],
            }
            scalars.update({f"train/{k}": v for k, v in terms.items()})
            g_mean = out.gates.detach().float().mean(dim=(0, 2, 3))
            scalars.update({f"train/gate_{n}": float(g) for n, g in zip(expert_names, g_mean)})
            log.log(step, scalars)
            bar.set_postfix(loss=f"{float(total.detach()):.4f}", lr=f"{lr_now:.2e}")
            t_last, steps_since = now, 0
        metrics = None
        if val_ds is not None and (step % cfg.train.val_every == 0 or step == cfg.train.steps):
            metrics, baseline = validate(ema.module, val_ds, device, expert_names, baseline)
            best_expert = max(expert_names, key=lambda n: baseline[n])
            metrics["val/gain_over_best_expert"] = metrics["val/psnr"] - baseline[best_expert]
            log.log(step, {**metrics, **{f"val/expert_{k}": v for k, v in baseline.items()}})
            tqdm.write(
                f"train: step {step}: val PSNR fusion {metrics['val/psnr']:.3f} dB | "
                + " | ".join(f"{k} {v:.3f}" for k, v in baseline.items())
                + f" | gain over best expert ({best_expert}) {metrics['val/gain_over_best_expert']:+.3f} dB"
            )
        if world > 1:
            dist.barrier()
        if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps or metrics is not None:
            checkpoint(step, metrics)
    bar.close()
    if log is not None:
        log.close()
    summary = {
        "step": step,
        "best_psnr": counters["best_psnr"],
        "nonfinite_total": counters["nonfinite_total"],
        "baseline": baseline,
    }
    if world > 1:
        dist.destroy_process_group()
    return summary


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", nargs="?", help="run config YAML (e.g. configs/fusion.yaml); optional with --resume")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 data.batch_size=8")
    ap.add_argument("--resume", type=Path, default=None, help="run directory to continue (runs/NAME)")
    args = ap.parse_intermixed_args(argv)  # dotted overrides may follow the options
    if args.config is not None and "=" in args.config:  # only overrides were given (with --resume)
        args.overrides.insert(0, args.config)
        args.config = None

    if args.resume is None and args.config is None:
        ap.error("a config file is required (or --resume RUN_DIR)")
    cfg, run_dir = prepare_run(
        prog="train",
        config=args.config,
        overrides=args.overrides,
        resume=args.resume,
        load=load_run_config,
        run_dir_of=lambda c: Path(c.train.runs_dir) / c.train.name,
        write=int(os.environ.get("RANK", "0")) == 0,
        check=check_run_inputs,
    )
    ok = False
    try:
        summary = train(cfg, run_dir, resume=args.resume is not None)
        ok = True
    finally:
        release_run(run_dir, discard=not ok)  # a new run that failed before its first checkpoint leaves no folder
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: done at step {summary['step']}; run directory {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``train.py`` with the toolkit's error handling: input and config errors are one line and exit status 2."""
    return run_cli("train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
