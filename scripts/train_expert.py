"""Train — or fine-tune — one ×4 SR expert of any architecture the expert loader can detect.

    python scripts/train_expert.py CONFIG [dotted.overrides ...] [--resume runs/NAME] [--export DIR]
    python scripts/train_expert.py --resume runs/NAME --export experts/zoo/NAME     # export a finished run

Plain functions, top to bottom: config → model → data → loop → checkpoints → export.

* The config (pipeline/training/expert_config.py) names the architecture and its constructor arguments
  (``model: {architecture: HAT, params: {...}}``): the arguments are checked against the class's ``__init__``
  (experts/architectures.py), and before training starts the expert loader must rebuild the model exactly from its
  state dict — so every checkpoint this script writes is a checkpoint ``experts.loading`` accepts.
* ``model.init_from`` fine-tunes from existing weights (a ``.safetensors``/``.pth`` file or a checkpoint / zoo / run
  directory), loaded strictly; a missing file is an error naming it.
* Data: random HR crops from one or more folders, LR made on the fly with the MATLAB-compatible bicubic
  (or read from pre-made LR folders), random flips/rotations (pipeline/training/patch_data.py); item ``k`` of the
  stream is
  a pure function of ``(seed, k)``.
* L1 or Charbonnier loss, AdamW, linear warm-up + cosine decay, optional gradient clipping, EMA of the weights
  (validation, checkpoints and exports use the EMA), the NaN guard of ``train.py`` (pipeline/training/loop.py).
* Validation: full images of each ``data.val_hr`` set (LR = MATLAB bicubic ×1/4), 8-bit output, PSNR/SSIM on the Y
  channel with a 4-pixel border (NTIRE's formula, pipeline/core/metrics.py), next to bicubic on the same images.
* ``runs/<name>/``: ``config.yaml``, ``metrics.csv`` + ``tb/``, ``ckpt/step_*/`` (``model.safetensors`` — the EMA
  state dict, loadable by ``experts.loading`` — ``config.json`` with architecture + params (experts/zoo.py),
  ``SHA256SUMS``, ``train_state.pt``) with ``last`` / ``best`` links. ``--resume`` continues the run.
* ``--export DIR`` (after training, or with ``--resume`` of a finished run): the final EMA weights as
  ``DIR/model.safetensors`` + ``config.json`` + ``expert.yaml`` (a one-expert YAML pinning sha256 and
  hyper-parameters) + ``MODEL_CARD.md`` (data, steps, validation PSNR measured through the expert loader).
  Resuming is bit-identical on the CPU (on GPUs, kernels and the CUDA RNG are not made deterministic).
* One process (CPU threads: ``train.threads``, or one GPU); seconds per step of configs: scripts/bench_train_expert.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from spandrel import SizeRequirements
from spandrel.__helpers.size_req import pad_tensor
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from experts.architectures import build_architecture, count_parameters, loader_round_trip
from experts.loading import ExpertLoadError, sha256_file
from experts.zoo import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    expert_yaml,
    load_expert_model,
    load_weights_strict,
    read_expert_config,
    save_expert,
)
from pipeline.core.cli import run_cli
from pipeline.core.config import ConfigError, config_to_dict
from pipeline.core.imageio import list_images, quantize_8bit, read_image
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.core.resize import bicubic_upscale, make_lr
from pipeline.training.checkpoint import (
    load_train_state,
    prune_checkpoints,
    remove_stale_temps,
    resolve_checkpoint,
    save_model_checkpoint,
    verify_checksums,
)
from pipeline.training.ema import ModelEma
from pipeline.training.expert_config import ExpertRunConfig, check_expert_run_inputs, load_expert_run_config
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
    worker_init,
)
from pipeline.training.losses import charbonnier_loss, l1_loss
from pipeline.training.patch_data import SRPatchDataset

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


@dataclass(frozen=True)
class ValImage:
    name: str
    lr: torch.Tensor  # (1,3,h,w)
    hr: torch.Tensor  # (1,3,sh,sw), cropped to a multiple of the scale


def val_set_name(folder: str | Path) -> str:
    """``../Set5/HR`` → ``Set5``; other folders by their own name."""
    p = Path(folder)
    return p.parent.name if p.name.lower() in ("hr", "gt") and p.parent.name else p.name


def load_val_sets(folders: Sequence[str], scale: int) -> dict[str, list[ValImage]]:
    sets: dict[str, list[ValImage]] = {}
    for folder in folders:
        files = list_images(folder)
        if not files:
            raise RunError(f"no validation images in {folder}")
        name = val_set_name(folder)
        while name in sets:
            name += "_"
        images = []
        for f in files:
            hr, lr = make_lr(read_image(f), scale)
            images.append(ValImage(name=f.stem, lr=lr, hr=hr))
        sets[name] = images
    return sets


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def super_resolve(model: nn.Module, lr: torch.Tensor, *, size_requirements, scale: int) -> torch.Tensor:
    """lr (1,3,h,w) → sr (1,3,sh,sw) in [0,1]: what the expert loader's call does (pad bottom/right to the size
    requirements, run, crop, clamp)."""
    h, w = lr.shape[-2:]
    _, lr_p = pad_tensor(lr, size_requirements)
    return model(lr_p)[..., : h * scale, : w * scale].float().clamp(0, 1)


def score(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> tuple[float, float]:
    sr = quantize_8bit(sr)
    return float(psnr_y(sr, hr, crop_border=scale)[0]), float(ssim_y(sr, hr, crop_border=scale)[0])


def evaluate(run, val_sets: dict[str, list[ValImage]], *, scale: int, device: torch.device) -> dict[str, dict]:
    """``run(lr) → sr`` on every image → ``{set: {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images"}}``."""
    out = {}
    for name, images in val_sets.items():
        rows = []
        for im in images:
            sr = run(im.lr.to(device)).cpu()
            rows.append((*score(sr, im.hr, scale), *score(bicubic_upscale(im.lr, scale), im.hr, scale)))
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
        out[name] = {
            "psnr": mean[0],
            "ssim": mean[1],
            "bicubic_psnr": mean[2],
            "bicubic_ssim": mean[3],
            "images": len(rows),
        }
    return out


def val_scalars(results: dict[str, dict]) -> dict[str, float]:
    scalars = {"val/psnr": next(iter(results.values()))["psnr"]}
    for name, r in results.items():
        scalars.update(
            {f"val/psnr_{name}": r["psnr"], f"val/ssim_{name}": r["ssim"], f"val/bicubic_{name}": r["bicubic_psnr"]}
        )
    return scalars


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------
def train_step(
    model: nn.Module,
    ema: ModelEma,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    batch: dict,
    *,
    device: torch.device,
    grad_clip: float,
    use_bf16: bool,
) -> tuple[torch.Tensor, bool]:
    """One optimiser step on ``batch`` (lr (B,3,p,p), hr (B,3,sp,sp)) with the NaN guard; the EMA follows a taken
    step. → (loss, whether the step was taken)."""
    model.train()
    lr = batch["lr"].to(device, non_blocking=True)  # (B,3,p,p)
    hr = batch["hr"].to(device, non_blocking=True)  # (B,3,sp,sp)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        sr = model(lr)  # (B,3,sp,sp)
    loss = loss_fn(sr.float(), hr)
    ok = guarded_step(loss, parameters=model.parameters(), optimizer=optimizer, grad_clip=grad_clip)
    if ok:
        ema.update(model)
    return loss, ok


def train(cfg: ExpertRunConfig, run_dir: Path, *, resume: bool) -> dict:
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
    ema = ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    counters = {"nonfinite_total": 0, "nonfinite_run": 0, "best_psnr": -math.inf}
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        ema.load_state_dict(state["ema"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        counters.update({k: state["counters"][k] for k in counters})
    loss_fn = l1_loss if t.loss == "l1" else charbonnier_loss  # train.loss: Literal["l1", "charbonnier"]
    use_bf16 = t.bf16 and device.type == "cuda"
    log = ScalarLog(run_dir, start_step=start_step)
    extra_base = {
        "run": run_dir.name,
        "run_config": config_to_dict(cfg),
        "train_images": len(dataset),
        "skipped_images": [p.name for p in dataset.skipped],
        "init_from": init,
    }

    def train_state(step: int) -> dict:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "counters": dict(counters),
            "data": signature,
            "config": config_to_dict(cfg),
        }

    def checkpoint(step: int, results: dict | None) -> None:
        extra = dict(extra_base, step=step)
        is_best = False
        if results is not None:
            psnr = val_scalars(results)["val/psnr"]
            extra.update(val_psnr=psnr, val=results)
            is_best = psnr > counters["best_psnr"]
            counters["best_psnr"] = max(psnr, counters["best_psnr"])
        save_model_checkpoint(
            ckpt_root,
            step=step,
            write_model=lambda d: save_expert(
                ema.module,
                d,
                architecture=cfg.model.architecture,
                params=cfg.model.params,
                scale=scale,
                expect=built.expect,
                extra=extra,
            ),
            train_state=train_state(step),
            is_best=is_best or not val_sets,  # without validation, "best" is the latest
        )
        prune_checkpoints(ckpt_root, keep_best=t.keep_best)

    bar = tqdm(total=t.steps, initial=start_step, desc=PROG, unit="step", dynamic_ncols=True)
    t_last, steps_since = time.time(), 0
    step = start_step
    for batch in loader:
        lr_now = cosine_lr(step, lr=t.lr, steps=t.steps, warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        loss, ok = train_step(
            model, ema, optimizer, loss_fn, batch, device=device, grad_clip=t.grad_clip, use_bf16=use_bf16
        )
        in_a_row = count_nonfinite(counters, ok)
        if not ok:
            tqdm.write(
                f"{PROG}: step {step}: non-finite loss or gradient, step skipped ({in_a_row} in a row, "
                f"{counters['nonfinite_total']} in total)"
            )
            if in_a_row >= t.max_nonfinite:
                checkpoint(step, None)
                raise RunError(
                    f"{in_a_row} non-finite steps in a row at step {step}: aborting "
                    f"(checkpoint saved to {ckpt_root / 'last'}); lower train.lr or check the data"
                )
        step += 1
        steps_since += 1
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            now = time.time()
            log.log(
                step,
                {
                    "train/loss": float(loss.detach()),
                    "train/lr": lr_now,
                    "train/steps_per_s": steps_since / (now - t_last),
                    "train/nonfinite_total": counters["nonfinite_total"],
                },
            )
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr_now:.2e}")
            t_last, steps_since = now, 0
        results = None
        if val_sets and (step % t.val_every == 0 or step == t.steps):
            ema.module.eval()
            results = evaluate(
                lambda x: super_resolve(ema.module, x, size_requirements=built.size_requirements, scale=scale),
                val_sets,
                scale=scale,
                device=device,
            )
            log.log(step, val_scalars(results))
            tqdm.write(
                f"{PROG}: step {step}: "
                + " | ".join(
                    f"{n} PSNR {r['psnr']:.3f} dB (bicubic {r['bicubic_psnr']:.3f})" for n, r in results.items()
                )
            )
        if step % t.ckpt_every == 0 or step == t.steps or results is not None:
            checkpoint(step, results)
    bar.close()
    log.close()
    return {
        "step": step,
        "best_psnr": counters["best_psnr"],
        "nonfinite_total": counters["nonfinite_total"],
        "num_params": n_params,
    }


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------
def _repo_relative(path: Path) -> str:
    """Expert YAML paths are relative to the repository root (experts/spec.py); outside it they stay absolute."""
    from experts.spec import REPO_ROOT

    p = path.resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


STAGE_KEYS = ("run", "step", "train_images", "skipped_images", "init_from", "run_config")  # one training stage


def export_expert(
    run_or_ckpt: str | Path, out_dir: str | Path, *, which: str = "last", val_hr: Sequence[str] | None = None
) -> Path:
    """Write the EMA weights of a run's checkpoint (``which``: last | best) as a zoo entry ``out_dir``:
    ``model.safetensors``, ``config.json``, ``expert.yaml``, ``MODEL_CARD.md``. The model card's validation numbers
    are measured through the expert loader on ``val_hr`` (default: the run's ``data.val_hr``)."""
    from experts.expert import load_expert
    from experts.spec import load_ensemble_spec

    ckpt = resolve_checkpoint(run_or_ckpt, which=which)
    verify_checksums(ckpt)
    cfg_json = read_expert_config(ckpt)
    extra = cfg_json["extra"]
    run_cfg = extra["run_config"]
    out = Path(out_dir)
    model = load_expert_model(ckpt)  # rebuilt from architecture + params, loaded strictly
    meta = {k: extra[k] for k in STAGE_KEYS}
    meta["history"] = training_history(meta["init_from"])  # read before out_dir may overwrite the starting weights
    save_expert(
        model,
        out,
        architecture=cfg_json["architecture"],
        params=cfg_json["params"],
        scale=cfg_json["scale"],
        expect=cfg_json["expect"],
        extra=meta,
    )
    sha = sha256_file(out / WEIGHTS_NAME)
    spec_text = expert_yaml(
        name=out.name,
        checkpoint=_repo_relative(out / WEIGHTS_NAME),
        architecture=cfg_json["architecture"],
        scale=cfg_json["scale"],
        sha256=sha,
        expect=cfg_json["expect"],
    )
    (out / "expert.yaml").write_text(
        "# One expert, loaded through experts.loading (architecture detected from the weights, then asserted).\n"
        "# Checkpoint paths are relative to the repository root. Copy the item into an ensemble YAML to use it.\n"
        + spec_text
    )
    expert = load_expert(load_ensemble_spec(out / "expert.yaml").experts[0], ensemble_scale=cfg_json["scale"])
    folders = list(val_hr) if val_hr is not None else list(run_cfg["data"]["val_hr"])
    results = (
        evaluate(
            lambda x: expert.run(x)[0],
            load_val_sets(folders, cfg_json["scale"]),
            scale=cfg_json["scale"],
            device=torch.device("cpu"),
        )
        if folders
        else {}
    )
    (out / "MODEL_CARD.md").write_text(model_card(out.name, cfg_json, meta, results, sha, folders, spec_text))
    return out


def training_history(init: dict | None) -> list[dict]:
    """The training stages before a fine-tuning run, oldest first, read from the export it started from.

    ``init`` is the run's recorded ``init_from`` (path + sha256 of the starting weights). When the starting weights
    are a project-format export or run checkpoint (a ``config.json`` beside them), its stage — and the stages before
    it, which an export records under ``history`` — are returned, so an expert fine-tuned twice still says how it was
    trained from scratch. Weights from elsewhere (a ``.pth``) give one stage ``{"external": path, "sha256": ...}``;
    weights that changed since the run started from them give ``{"unreadable": path, ...}`` with the reason — never a
    guessed history."""
    if init is None:
        return []
    path = Path(init["path"])
    if not path.is_file():
        return [{"unreadable": str(path), "sha256": init["sha256"], "why": "the file no longer exists"}]
    if sha256_file(path) != init["sha256"]:
        return [
            {"unreadable": str(path), "sha256": init["sha256"], "why": "the file changed since the run started from it"}
        ]
    parent = read_expert_config(path.parent)["extra"] if (path.parent / CONFIG_NAME).is_file() else {}
    if not all(k in parent for k in STAGE_KEYS):
        return [{"external": str(path), "sha256": init["sha256"]}]
    earlier = parent["history"] if "history" in parent else training_history(parent["init_from"])
    return [*earlier, {k: parent[k] for k in STAGE_KEYS}]


def _stage_lines(stage: dict) -> list[str]:
    """Markdown bullets describing one training stage (a run's data, schedule and starting point)."""
    if "external" in stage:
        return [f"- started from outside weights `{stage['external']}` (sha256 `{stage['sha256']}`)"]
    if "unreadable" in stage:
        return [
            (
                f"- started from `{stage['unreadable']}` (sha256 `{stage['sha256']}`), whose own training is not "
                f"recorded here: {stage['why']}"
            )
        ]
    d, t = stage["run_config"]["data"], stage["run_config"]["train"]
    lr_text = (
        "pre-made LR folders " + ", ".join(f"`{x}`" for x in d["train_lr"])
        if d["train_lr"]
        else "made on the fly from each HR crop with the MATLAB-compatible bicubic (`pipeline.core.resize.imresize`, "
        "uint8 path — what MATLAB's `imresize` writes to a PNG)"
    )
    init = stage["init_from"]
    return [
        f"- HR data: {', '.join(f'`{x}`' for x in d['train_hr'])} ({stage['train_images']} images"
        + (f"; {len(stage['skipped_images'])} smaller than the HR patch left out" if stage["skipped_images"] else "")
        + ")",
        f"- LR: {lr_text}",
        (
            f"- {stage['step']} steps"
            + (f" (of a {t['steps']}-step schedule)" if stage["step"] != t["steps"] else "")
            + f" × batch {d['batch_size']} of {d['patch']}×{d['patch']} LR crops"
            + f" (random flips/rotations: {d['augment']})"
        ),
        (
            f"- loss {t['loss']}; AdamW lr {t['lr']} (betas {t['betas']}, weight decay {t['weight_decay']}), "
            f"{t['warmup_steps']} warm-up steps then cosine to ×{t['min_lr_ratio']}; "
            f"gradient clip {t['grad_clip'] or 'off'}; EMA decay {t['ema_decay']}; seed {t['seed']}"
        ),
        "- initialised from: "
        + (f"`{init['path']}` (sha256 `{init['sha256']}`)" if init else "random (trained from scratch)"),
    ]


def model_card(
    name: str, cfg_json: dict, meta: dict, results: dict, sha: str, folders: list[str], spec_text: str
) -> str:
    t = meta["run_config"]["train"]
    stages = [*meta["history"], {k: meta[k] for k in STAGE_KEYS}]
    if len(stages) == 1:
        training = _stage_lines(stages[0])
    else:
        total = sum(s["step"] for s in stages if "run_config" in s)
        training = [
            f"{len(stages)} stages, each fine-tuning the previous one's exported EMA weights ({total} steps in all):"
        ]
        for i, stage in enumerate(stages, 1):
            title = f"run `{stage['run']}`" if "run" in stage else "weights from elsewhere"
            training += ["", f"Stage {i} — {title}" + (" (this export)" if i == len(stages) else "") + ":", ""]
            training += _stage_lines(stage)
    lines = [
        f"# {name} — ×{cfg_json['scale']} SR expert ({cfg_json['architecture']}, "
        f"{cfg_json['num_params']:,} parameters)",
        "",
        (
            f"Trained with `scripts/train_expert.py` (run `{meta['run']}`, exported at step {meta['step']} of "
            f"{t['steps']}: the EMA weights)."
        ),
        "",
        "## Use",
        "",
        (
            "`expert.yaml` loads it through `experts.loading` (the architecture and every hyper-parameter below are "
            "detected from the weights and asserted; the sha256 is pinned):"
        ),
        "",
        "```yaml",
        spec_text.rstrip(),
        "```",
        "",
        "## Model",
        "",
        f"- architecture `{cfg_json['architecture']}`, params `{cfg_json['params']}`",
        f"- `model.safetensors` sha256 `{sha}`",
        "",
        "## Training",
        "",
        *training,
        "",
        "## Validation",
        "",
    ]
    if results:
        lines += [
            (
                "PSNR / SSIM on the Y channel (BT.601), 4-pixel border, 8-bit output — the NTIRE formula "
                "(`pipeline/core/metrics.py`); LR = MATLAB bicubic ×1/4 of the HR; measured at export through the "
                "expert loader."
            ),
            "",
            "| set | images | PSNR (dB) | SSIM | bicubic PSNR | bicubic SSIM |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} (`{f}`) | {r['images']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['bicubic_psnr']:.3f} | "
            f"{r['bicubic_ssim']:.4f} |"
            for (n, r), f in zip(results.items(), folders)
        ]
    else:
        lines.append("No validation set was given.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------------
def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="train_expert.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", nargs="?", help="run config YAML (e.g. configs/experts/train/nafnet_sr.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=2000 data.batch_size=8")
    ap.add_argument("--resume", type=Path, default=None, help="run directory to continue (runs/NAME)")
    ap.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="afterwards, write the final EMA weights as a zoo entry DIR (e.g. experts/zoo/NAME)",
    )
    ap.add_argument(
        "--export-which",
        choices=("last", "best"),
        default="last",
        help="checkpoint to export: the final one (default) or the best by validation PSNR",
    )
    ap.add_argument(
        "--export-val",
        nargs="+",
        default=None,
        metavar="HR_DIR",
        help="validation HR folders for the model card (default: the run's data.val_hr)",
    )
    args = ap.parse_intermixed_args(argv)  # dotted overrides may follow the options
    if args.config is not None and "=" in args.config:  # only overrides were given (with --resume)
        args.overrides.insert(0, args.config)
        args.config = None
    if args.resume is None and args.config is None:
        ap.error("a config file is required (or --resume RUN_DIR)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("runs in one process (no torchrun / DDP): the small experts it trains do not need it")
    cfg, run_dir = prepare_run(
        prog=PROG,
        config=args.config,
        overrides=args.overrides,
        resume=args.resume,
        load=load_expert_run_config,
        run_dir_of=lambda c: Path(c.train.runs_dir) / c.train.name,
        check=check_expert_run_inputs,
    )
    ok = False
    try:
        summary = train(cfg, run_dir, resume=args.resume is not None)
        ok = True
    finally:
        release_run(run_dir, discard=not ok)
    print(f"{PROG}: done at step {summary['step']}; run directory {run_dir}")
    if args.export is not None:
        out = export_expert(run_dir, args.export, which=args.export_which, val_hr=args.export_val)
        print(f"{PROG}: exported to {out} ({out / 'MODEL_CARD.md'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
