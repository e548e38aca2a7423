"""Exporting a trained expert as a zoo entry (``model.safetensors`` + ``config.json`` + ``expert.yaml`` +
``MODEL_CARD.md``), with its whole training history and validation measured through the expert loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from experts.loading import sha256_file
from experts.zoo import CONFIG_NAME, WEIGHTS_NAME, expert_yaml, load_expert_model, read_expert_config, save_expert
from pipeline.training.checkpoint import resolve_checkpoint, verify_checksums
from pipeline.training.expert.validation import evaluate, load_val_sets

__all__ = ["STAGE_KEYS", "export_expert", "model_card", "training_history"]


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
        checkpoint=WEIGHTS_NAME,  # beside the YAML: an expert YAML's paths are relative to its own folder
        architecture=cfg_json["architecture"],
        scale=cfg_json["scale"],
        sha256=sha,
        expect=cfg_json["expect"],
    )
    (out / "expert.yaml").write_text(
        "# One expert, loaded through experts.loading (architecture detected from the weights, then asserted).\n"
        "# Paths are relative to this file's folder. Copy the item into an ensemble YAML (with the path from there).\n"
        + spec_text
    )
    # the card measures the exported expert (a short run's weights may still be far from a bicubic upscale): the
    # loader's probe is not enforced here, its score goes on the card; loading the entry's expert.yaml enforces it
    spec = load_ensemble_spec(out / "expert.yaml").experts[0]
    expert = load_expert(dataclasses.replace(spec, min_probe_psnr=0.0), ensemble_scale=cfg_json["scale"])
    probe = (expert.probe_psnr, spec.min_probe_psnr)
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
    (out / "MODEL_CARD.md").write_text(
        model_card(out.name, cfg_json, meta, results, sha, folders, spec_text, probe=probe)
    )
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


def _probe_line(score: float, threshold: float) -> str:
    verdict = (
        "passes"
        if score >= threshold
        else "below it: loading `expert.yaml` refuses this expert (train it longer, or set `min_probe_psnr` for it)"
    )
    return (
        f"- the loader's probe (`experts/probe.py`): on a smooth test image the output is {score:.2f} dB PSNR from "
        f"its bicubic upscale, `min_probe_psnr` {threshold:g} dB — {verdict}"
    )


def model_card(
    name: str,
    cfg_json: dict,
    meta: dict,
    results: dict,
    sha: str,
    folders: list[str],
    spec_text: str,
    *,
    probe: tuple[float, float],
) -> str:
    """The zoo entry's MODEL_CARD.md; ``probe``: the loader's probe score (dB) of the exported weights and the
    expert YAML's ``min_probe_psnr`` (experts/probe.py)."""
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
        _probe_line(*probe),
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
