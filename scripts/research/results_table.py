"""Print the results table (Markdown) from ``scripts/evaluate.py --json`` files.

    python scripts/research/results_table.py RESULTS_DIR [--sets Set5 Set14 BSD100] [--best-of craft ditn span]

Reads ``RESULTS_DIR/<set>/scores/<method>.json`` (written by scripts/research/reproduce_results.sh) and prints one
row per method with mean PSNR/SSIM per set, then the fusion's margin over the best single expert of each set. Methods
are listed in a fixed order when present (experts first, then ``mean``, ``blend``, ``fusion``, ``fusion_tta``, the block
oracles ``oracle_b16``/``oracle_b8`` and ``oracle``); others follow alphabetically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.cli import run_cli

__all__ = ["load_scores", "format_table", "main"]

ORDER = ("bicubic", "mean", "blend", "fusion", "fusion_tta", "oracle_b16", "oracle_b8", "oracle")
LABELS = {
    "bicubic": "bicubic",
    "mean": "plain mean of the experts",
    "blend": "best fixed linear blend (least squares on the set itself)",
    "fusion": "**fusion**",
    "fusion_tta": "**fusion + x8 TTA**",
    "oracle_b16": "16×16-block oracle (ceiling of a smooth gate)",
    "oracle_b8": "8×8-block oracle",
    "oracle": "per-pixel oracle (upper bound)",
}


def load_scores(results: Path, sets: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """→ ``{set: {method: {"psnr", "ssim", "n"}}}``."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for s in sets:
        folder = results / s / "scores"
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no scores in {folder} (run scripts/research/reproduce_results.sh first)")
        table[s] = {}
        for f in files:
            d = json.loads(f.read_text())
            table[s][f.stem] = {"psnr": d["mean"]["psnr"], "ssim": d["mean"]["ssim"], "n": len(d["images"])}
    return table


def _method_order(methods: set[str], experts: list[str]) -> list[str]:
    first = [m for m in experts if m in methods] + [m for m in ORDER if m in methods]
    return first + sorted(methods - set(first))


def format_table(table: dict[str, dict[str, dict[str, float]]], experts: list[str]) -> str:
    sets = list(table)
    methods = _method_order(set().union(*(set(v) for v in table.values())), experts)
    head = "| method | " + " | ".join(f"{s} PSNR / SSIM" for s in sets) + " |"
    lines = [head, "|---|" + "---|" * len(sets)]
    for m in methods:
        cells = []
        for s in sets:
            r = table[s].get(m)
            cells.append("—" if r is None else f"{r['psnr']:.3f} / {r['ssim']:.4f}")
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{s}: {int(next(iter(table[s].values()))['n'])} images" for s in sets)
    lines.append("")
    lines.append(f"Y-channel PSNR (dB) / SSIM, BT.601 16–235, border 4 ({counts}).")
    for name in ("fusion", "fusion_tta"):
        margins = []
        for s in sets:
            present = [e for e in experts if e in table[s]]
            if name in table[s] and present:
                best = max(present, key=lambda e: table[s][e]["psnr"])
                margins.append(f"{s} {table[s][name]['psnr'] - table[s][best]['psnr']:+.3f} dB vs {best}")
        if margins:
            lines.append(f"{name} − best expert: " + "; ".join(margins) + ".")
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results folder of scripts/research/reproduce_results.sh")
    ap.add_argument("--sets", nargs="+", default=["Set5", "Set14", "BSD100"])
    ap.add_argument("--best-of", nargs="+", default=["craft", "ditn", "span"], help="the single experts")
    args = ap.parse_args(argv)
    try:
        table = load_scores(args.results, args.sets)
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"results_table: {exc}", file=sys.stderr)
        return 2
    print(format_table(table, args.best_of))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("results_table", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
