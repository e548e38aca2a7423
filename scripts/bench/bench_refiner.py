"""Benchmark the TSD-SR refiner.

    python scripts/bench/bench_refiner.py                          # tiny random model on the CPU (seconds)
    python scripts/bench/bench_refiner.py --threads 1 2            # compare thread counts side by side
    python scripts/bench/bench_refiner.py --config configs/refiner/tsdsr.yaml --sizes 512 1024   # real weights (GPU)

Tiny mode (default) builds the test setup of tests/tiny_refiner.py (loaded from its file) in a temporary folder (a
4-layer SD3 MMDiT and an SD3-structured toy VAE, TSD-SR-format LoRA files written by peft) and reports, per image size:
* the time of one refiner call and of its stages (VAE encode, transformer step, VAE decode, colour fix);
* latent tiling on vs off (tiles of 4 latent px, overlap 2) and VAE tiling on vs off, as ratios.
The tiny model's numbers measure the pipeline's overhead (tiling loops, colour fix, dtype handling), not SD3's cost.

Real mode (``--config``) loads the configured weights and times one refiner call per ``--sizes`` entry on a random image
(after one warm-up call), with the device synchronised, plus peak CUDA memory when on a GPU.

Times are medians of ``--repeats`` runs after one warm-up run. Other processes sharing the CPU inflate and scatter
every number (with 2 threads on 2 busy cores, by 10-100x): compare numbers from one run, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.core.bench import timed
from pipeline.core.cli import run_cli
from pipeline.core.config import load_config
from pipeline.refiner.config import RefinerConfig


def _tiny_refiner():
    """tests/tiny_refiner.py, the tests' tiny TSD-SR setup (kept out of the installed package), loaded from its file."""
    path = Path(__file__).resolve().parents[2] / "tests" / "tiny_refiner.py"
    spec = importlib.util.spec_from_file_location("tiny_refiner", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"{path}: the tiny refiner setup of the tests is missing (a checkout has it)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_tiny(sizes: list[int], threads: list[int], repeats: int) -> None:
    from pipeline.refiner.colour import colour_fix

    write_tiny_setup = _tiny_refiner().write_tiny_setup
    from pipeline.refiner.tsdsr import TSDSRRefiner

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        setup = write_tiny_setup(tmp)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        refiner = TSDSRRefiner.from_config(setup.config)
        t_load = time.perf_counter() - t0
    print(f"tiny setup written in {t_write:.2f} s; from_config (load + strict LoRA merge) {t_load:.2f} s")
    cfg = refiner.config

    def variant(**changes: object) -> TSDSRRefiner:
        return TSDSRRefiner(
            transformer=refiner.transformer,
            vae=refiner.vae,
            prompt_embeds=refiner.prompt_embeds,
            pooled_embeds=refiner.pooled_embeds,
            config=dataclasses.replace(cfg, **changes),
        )

    untiled = variant(latent_tile=64, vae_tile=0, vae_overlap=0)
    latent_tiled = variant(latent_tile=4, latent_overlap=2, vae_tile=0, vae_overlap=0)
    all_tiled = variant(latent_tile=4, latent_overlap=2, vae_tile=4, vae_overlap=2)
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        print(f"\n## CPU, {n_threads} thread(s), median of {repeats}; times in ms")
        print(
            f"{'image':>9s} {'refine':>8s} {'encode':>8s} {'step':>8s} {'decode':>8s} {'wavelet':>8s} {'adain':>8s}"
            f" {'lat.tiled':>10s} {'(ratio)':>8s} {'all tiled':>10s} {'(ratio)':>8s}"
        )
        for size in sizes:
            sr = torch.rand(1, 3, size, size)
            x = sr * 2 - 1
            with torch.inference_mode():
                z = untiled.encode(x)
                z0 = untiled.refine_latent(z)
                y = (untiled.decode(z0).clamp(-1, 1) + 1) / 2
                t_refine = timed(functools.partial(untiled, sr), repeats=repeats)[0]
                t_enc = timed(functools.partial(untiled.encode, x), repeats=repeats)[0]
                t_step = timed(functools.partial(untiled.refine_latent, z), repeats=repeats)[0]
                t_dec = timed(functools.partial(untiled.decode, z0), repeats=repeats)[0]
                t_wav = timed(functools.partial(colour_fix, y, sr, method="wavelet"), repeats=repeats)[0]
                t_ada = timed(functools.partial(colour_fix, y, sr, method="adain"), repeats=repeats)[0]
                t_lat = timed(functools.partial(latent_tiled, sr), repeats=repeats)[0]
                t_all = timed(functools.partial(all_tiled, sr), repeats=repeats)[0]
            ms = 1000.0
            print(
                f"{size:>4d}x{size:<4d} {t_refine * ms:8.1f} {t_enc * ms:8.1f} {t_step * ms:8.1f} {t_dec * ms:8.1f} "
                f"{t_wav * ms:8.1f} {t_ada * ms:8.1f} {t_lat * ms:10.1f} {t_lat / t_refine:7.2f}x "
                f"{t_all * ms:10.1f} {t_all / t_refine:7.2f}x",
                flush=True,
            )


def bench_real(config: Path, overrides: list[str], sizes: list[int], repeats: int) -> None:
    from pipeline.refiner.tsdsr import TSDSRRefiner

    cfg = load_config(RefinerConfig, config, overrides)
    t0 = time.perf_counter()
    refiner = TSDSRRefiner.from_config(cfg)
    print(f"loaded {config} on {cfg.device} ({cfg.precision}) in {time.perf_counter() - t0:.1f} s")
    cuda = refiner.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"{'image':>11s} {'refine s':>9s} {'peak GiB':>9s}")
    for size in sizes:
        sr = torch.rand(1, 3, size, size, device=refiner.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = timed(functools.partial(refiner, sr), repeats=repeats, sync=sync)[0]
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"{size:>5d}x{size:<5d} {t:9.2f} {peak:9.2f}", flush=True)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="real-weight refiner YAML (default: tiny model)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for --config, e.g. device=cuda:1")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="square image sides")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="CPU thread counts (tiny mode)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_intermixed_args(argv)  # dotted overrides may follow the options
    if args.config is None:
        if args.overrides:
            parser.error("overrides need --config")
        bench_tiny(args.sizes or [32, 64, 128], args.threads, args.repeats)
    else:
        bench_real(args.config, args.overrides, args.sizes or [512, 1024], max(1, args.repeats // 2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_refiner", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
