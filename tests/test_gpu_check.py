"""scripts/bench/gpu_check.py end to end on tiny sizes (what it does without CUDA): one table, a row per expert count
and step mode, old reader and new loader side by side. Timings are printed, never asserted."""

from __future__ import annotations

import pytest
from conftest import program


@pytest.mark.slow  # ~15 s alone, up to ~45 s on a loaded 2-core machine
def test_gpu_check_tiny_prints_one_table(tmp_path, capsys):
    assert program("bench/gpu_check").main(["--tiny", "--workers", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = [i for i, ln in enumerate(lines) if "old reader" in ln and "new loader" in ln]
    assert len(header) == 1
    rows = [ln.split() for ln in lines[header[0] + 2 :] if ln[:3].strip().isdigit()]
    assert [r[0] for r in rows] == ["3", "11"]
    for r in rows:  # E, mode (2 words), steps/s, crops/s, old reader, new loader, peak MiB ("-" on the CPU), verdict
        assert float(r[3]) > 0 and all(float(v) >= 0 for v in r[4:7]) and r[7] == "-"
    assert (tmp_path / "lean_e11.h5").is_file()  # the synthetic caches it read
