"""Training — or fine-tuning — one ×4 SR expert of any architecture the expert loader can detect: the library behind
``scripts/train_expert.py``.

Plain functions, top to bottom: model → data → :func:`train` (the loop skeleton shared with the fusion network,
pipeline/training/loop.py :class:`TrainLoop`); validation in ``validation.py``, the zoo export in ``export.py``.

* The config (pipeline/training/expert/config.py) names the architecture and its constructor arguments; before
  training starts the expert loader must rebuild the model exactly from its state dict, so every checkpoint written
  here is one ``experts.loading`` accepts.
* ``model.init_from`` fine-tunes from existing weights (loaded strictly; a missing file is an error naming it).
* Data: random HR crops, LR made on the fly with the MATLAB-compatible bicubic (or read from pre-made LR folders),
  random flips/rotations (pipeline/training/patch_data.py); item ``k`` of the stream is a pure function of
  ``(seed, k)``.
* L1 or Charbonnier loss, AdamW, warm-up + cosine, optional gradient clipping, EMA (validation, checkpoints and
  exports use the EMA), the NaN guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from spandrel import SizeRequirements
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from experts.architectures import build_architecture, count_parameters, loader_round_trip
from experts.loading import ExpertLoadError, sha256_file
from experts.zoo import WEIGHTS_NAME, load_weights_strict, read_expert_config, save_expert
from pipeline.core.config import ConfigError, config_to_dict
from pipeline.training.checkpoint import (
    load_train_state,
    remove_stale_temps,
    resolve_checkpoint,
    save_model_checkpoint,
)
from pipeline.training.ema import ModelEma
from pipeline.training.expert.config import ExpertRunConfig
from pipeline.training.expert.validation import evaluate, load_val_sets, super_resolve, val_scalars
from pipeline.training.loop import StepResult, TrainLoop, Validation
from pipeline.training.losses import charbonnier_loss, l1_loss
from pipeline.training.patch_data import SRPatchDataset
from pipeline.training.runs import RunError, config_differences
from pipeline.training.scalar_log import ScalarLog
from pipeline.training.steps import StepBatchSampler, guarded_step, pick_device, worker_init

__all__ = ["PROG", "BuiltModel", "build_dataset", "build_loader", "build_model", "train", "train_step"]

PROG = "train_expert"


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    size_requirements: SizeRequirements  # of the architecture: what the expert loader pads inputs to
    expect: dict  # the params the loader's detection recovers (→ expert YAML `expect:`)


def build_model(cfg: ExpertRunConfig) -> BuiltModel:
    """Build the expert from ``model.params`` and prove the expert loader rebuilds it exactly (ConfigError if not)."""
    m = cfg.model
    model = build_architecture(m.architecture, m.params)
    desc, expect = loader_round_trip(model, architecture=m.architecture, params=m.params, scale=m.scale)
    reqs = desc.size_requirements
    if not reqs.check(cfg.data.patch, cfg.data.patch):
        raise ConfigError(f"data.patch={cfg.data.patch}: {m.architecture} needs inputs of {reqs}")
    return BuiltModel(model=model, size_requirements=reqs, expect=expect)


def init_path(init_from: str) -> Path:
    """``model.init_from`` → the weights file: a file as given, or a directory's ``model.safetensors`` (a run
    directory → its ``ckpt/last``). A missing file is an error naming it."""
    p = Path(init_from)
    if p.is_dir():
        if (p / WEIGHTS_NAME).is_file():
            return p / WEIGHTS_NAME
        if (p / "ckpt" / "last" / WEIGHTS_NAME).is_file():
            return p / "ckpt" / "last" / WEIGHTS_NAME
        raise RunError(f"model.init_from={init_from}: no {WEIGHTS_NAME} in {p} (nor in {p}/ckpt/last)")
    if not p.is_file():
        raise RunError(f"model.init_from: checkpoint file not found: {p}")
    return p


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def build_dataset(cfg: ExpertRunConfig) -> SRPatchDataset:
    d = cfg.data
    return SRPatchDataset(
        d.train_hr,
        patch=d.patch,
        scale=cfg.model.scale,
        lr_dirs=d.train_lr,
        augment=d.augment,
        seed=cfg.train.seed,
        skip_small=d.skip_small,
        cache_images=d.cache_images,
    )


def build_loader(cfg: ExpertRunConfig, dataset: SRPatchDataset, *, start_step: int, device: torch.device):
    sampler = StepBatchSampler(start_step=start_step, steps=cfg.train.steps, batch_size=cfg.data.batch_size)
    # own generator: creating the iterator must not draw from the global RNG (dropout / drop-path use it, and a
    # resumed run restores it from the checkpoint)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def data_signature(dataset: SRPatchDataset) -> dict:
    return {
        "files": [str(p) for p in dataset.files],
        "lr_files": [str(p) for p in dataset.lr_files] if dataset.lr_files is not None else None,
    }


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    batch: dict,
    *,
    device: torch.device,
    grad_clip: float,
    use_bf16: bool,
) -> tuple[torch.Tensor, bool]:
    """One optimiser step on ``batch`` (lr (B,3,p,p), hr (B,3,sp,sp)) with the NaN guard → (loss, whether the step
    was taken). The EMA update after a taken step is the loop's."""
    model.train()
    lr = batch["lr"].to(device, non_blocking=True)  # (B,3,p,p)
    hr = batch["hr"].to(device, non_blocking=True)  # (B,3,sp,sp)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        sr = model(lr)  # (B,3,sp,sp)
    loss = loss_fn(sr.float(), hr)
    ok = guarded_step(loss, parameters=model.parameters(), optimizer=optimizer, grad_clip=grad_clip)
    return loss, ok


def train(cfg: ExpertRunConfig, run_dir: Path, *, resume: bool) -> dict:
    """Train (``resume``: continue) the expert run in ``run_dir`` → summary (final step, best validation PSNR,
    non-finite steps, parameter count)."""
    t = cfg.train
    device = pick_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    ckpt_root = run_dir / "ckpt"
    remove_stale_temps(ckpt_root)  # what a killed run left (unfinished checkpoint dirs, .last.tmp-PID links)
    scale = cfg.model.scale

    state = load_train_state(resolve_checkpoint(run_dir)) if resume else None
    start_step = int(state["step"]) if state is not None else 0
    try:
        built = build_model(cfg)
    except ConfigError as exc:
        raise RunError(f"config error: {exc}") from exc
    model = built.model
    n_params = count_parameters(model)
    if state is not None:  # a resumed run has its weights in the train state (the init file is not needed)
        init = read_expert_config(resolve_checkpoint(run_dir))["extra"]["init_from"]
    elif cfg.model.init_from is not None:
        path = init_path(cfg.model.init_from)
        init = {"path": str(path), "sha256": sha256_file(path)}
        try:
            load_weights_strict(model, path, key=cfg.model.init_key)
        except ExpertLoadError as exc:
            raise RunError(f"cannot fine-tune: {exc}") from exc
        tqdm.write(f"{PROG}: fine-tuning from {path}")
    else:
        init = None
    dataset = build_dataset(cfg)
    signature = data_signature(dataset)
    if state is not None:
        diffs = config_differences(state["data"], signature)
        if diffs:
            raise RunError("cannot resume, the training data differ from the run's: " + "; ".join(diffs[:8]))
    if dataset.skipped:
        tqdm.write(
            f"{PROG}: left out {len(dataset.skipped)} image(s) smaller than the HR patch "
            f"{scale * cfg.data.patch}: {[p.name for p in dataset.skipped]}"
        )
    loader = build_loader(cfg, dataset, start_step=start_step, device=device)
    val_sets = load_val_sets(cfg.data.val_hr, scale)
    tqdm.write(
        f"{PROG}: {cfg.model.architecture} with {n_params:,} parameters; {len(dataset)} training images; "
        f"{cfg.data.batch_size} × {cfg.data.patch}² LR crops per step; steps {start_step} → {t.steps}"
    )

    model = model.to(device)
    loop = TrainLoop(
        prog=PROG,
        model=model,
        ema=ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup),
        optimizer=torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay),
        train=t,
        ckpt_root=ckpt_root,
        log=ScalarLog(run_dir, start_step=start_step),
    )
    if state is not None:
        loop.restore(state)
    loss_fn = l1_loss if t.loss == "l1" else charbonnier_loss  # train.loss: Literal["l1", "charbonnier"]
    use_bf16 = t.bf16 and device.type == "cuda"
    extra_base = {
        "run": run_dir.name,
        "run_config": config_to_dict(cfg),
        "train_images": len(dataset),
        "skipped_images": [p.name for p in dataset.skipped],
        "init_from": init,
    }

    def step(batch: dict, s: int) -> StepResult:
        loss, ok = train_step(
            model, loop.optimizer, loss_fn, batch, device=device, grad_clip=t.grad_clip, use_bf16=use_bf16
        )
        return StepResult(loss=loss, ok=ok)

    def validate(s: int) -> Validation:
        loop.ema.module.eval()
        results = evaluate(
            lambda x: super_resolve(loop.ema.module, x, size_requirements=built.size_requirements, scale=scale),
            val_sets,
            scale=scale,
            device=device,
        )
        scalars = val_scalars(results)
        loop.log.log(s, scalars)
        tqdm.write(
            f"{PROG}: step {s}: "
            + " | ".join(f"{n} PSNR {r['psnr']:.3f} dB (bicubic {r['bicubic_psnr']:.3f})" for n, r in results.items())
        )
        return Validation(psnr=scalars["val/psnr"], data=results)

    def save(s: int, val: Validation | None, is_best: bool) -> None:
        extra = dict(extra_base, step=s)
        if val is not None:
            extra.update(val_psnr=val.psnr, val=val.data)
        save_model_checkpoint(
            ckpt_root,
            step=s,
            write_model=lambda d: save_expert(
                loop.ema.module,
                d,
                architecture=cfg.model.architecture,
                params=cfg.model.params,
                scale=scale,
                expect=built.expect,
                extra=extra,
            ),
            train_state=loop.state(s, {"data": signature, "config": config_to_dict(cfg)}),
            is_best=is_best,
        )

    final = loop.run(loader, start_step=start_step, step=step, validate=validate if val_sets else None, save=save)
    loop.log.close()
    return {
        "step": final,
        "best_psnr": loop.counters["best_psnr"],
        "nonfinite_total": loop.counters["nonfinite_total"],
        "num_params": n_params,
    }
