"""Issue 29, "Nothing breaks at the edges": what a hostile-but-realistic user hands the tools — tampered weights
files and checkpoints, absurd numbers, huge strings, full disks, two writers on one output, a clone in another
folder — ends in one line naming the file (exit status 2), never in a traceback, a segfault or a silent mix."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, program

from pipeline.core.imageio import write_image

submit = program("submit")

ZOO_FUSION = REPO_ROOT / "checkpoints" / "fusion_zoo_small"


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _refused(code: int, lines: list[str], *needles: str) -> str:
    """Exit 2 and exactly one error line (no traceback) holding every needle → that line."""
    assert code == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    hits = [line for line in lines if all(n in line for n in needles)]
    assert len(hits) == 1, (needles, lines)
    return hits[0]


@pytest.fixture
def lr_dir(tmp_path) -> Path:
    d = tmp_path / "lr"
    write_image(d / "0901x4.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3)))
    return d


# ---------------------------------------------------------------------------------------------------------------------
# item 2: an ensembler weights file: every number finite and in range before any work; what is echoed is capped
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def blend_file(tiny_compact_experts, tmp_path) -> Path:
    from experts.ensemble import ExpertEnsemble
    from pipeline.inference.ensemblers import Blend, save
    from pipeline.inference.pipeline import expert_spec_from_yaml

    ensemble = ExpertEnsemble.from_spec(expert_spec_from_yaml(tiny_compact_experts["yaml"]))
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    return save(Blend(experts=fps, weights=[0.5, 0.5]), tmp_path / "blend.json")


def _submit_blend(yaml_path: Path, weights: Path, lr: Path, out: Path) -> int:
    args = ["--method", "blend", "--experts", str(yaml_path), "--weights", str(weights)]
    return submit.main([*args, "--input", str(lr), "--output", str(out), "--device", "cpu"])


def test_ensembler_weight_out_of_range_is_refused_before_any_work(
    tiny_compact_experts, blend_file, lr_dir, tmp_path, capsys
):
    payload = json.loads(blend_file.read_text())
    payload["params"]["weights"] = [1e308, 0.5]  # finite, but the blend overflows to Inf
    blend_file.write_text(json.dumps(payload))
    out = tmp_path / "out"
    code = _submit_blend(tiny_compact_experts["yaml"], blend_file, lr_dir, out)
    _refused(code, _err_lines(capsys), "blend.json", "weights", "1e+308")
    assert not out.exists()  # not even a folder holding only its marker


def test_ensembler_huge_string_is_not_echoed_whole(tiny_compact_experts, blend_file, lr_dir, tmp_path, capsys):
    payload = json.loads(blend_file.read_text())
    payload["method"] = "x" * 100_000
    blend_file.write_text(json.dumps(payload))
    code = _submit_blend(tiny_compact_experts["yaml"], blend_file, lr_dir, tmp_path / "out")
    line = _refused(code, _err_lines(capsys), "blend.json", "method")
    assert len(line) < 1000 and "100002 characters" in line


def test_one_line_caps_any_message():
    from pipeline.core.cli import LINE_LIMIT, one_line
    from pipeline.core.errors import shorten

    assert shorten("abc") == "'abc'" and shorten("abc", quote=False) == "abc"
    assert shorten("y" * 500).endswith("… (502 characters)") and len(shorten("y" * 500)) < 250
    assert len(one_line(ValueError("z" * 100_000))) < LINE_LIMIT + 40


# ---------------------------------------------------------------------------------------------------------------------
# item 4: a checkpoint whose checksums its editor recomputed: config.json passes the training config's ranges before
# any allocation, and a model.safetensors that is not one is one line
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def edited_checkpoint(tmp_path) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ZOO_FUSION, ckpt)
    return ckpt


def _edit_config(ckpt: Path, edit) -> None:
    from pipeline.model.io import write_checksums

    payload = json.loads((ckpt / "config.json").read_text())
    edit(payload)
    (ckpt / "config.json").write_text(json.dumps(payload))
    write_checksums(ckpt)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda p: p["config"].__setitem__("token_channels", 10**12), ("config.token_channels", "<= 1024")),
        (lambda p: p["config"]["hierarchical"].__setitem__("inner_channels", 10**9), ("inner_channels",)),
        (lambda p: p["config"]["hessian"].__setitem__("dilations", [1, 2, 10**6]), ("dilations[2]",)),
        (lambda p: p["extra"]["experts"][0].__setitem__("feature_channels", 10**15), ("feature_channels",)),
        (lambda p: p["extra"].__setitem__("scale", 1e300), ("scale",)),
        (lambda p: p["extra"]["experts"][1].pop("sha256"), ("experts[1].sha256",)),
        (lambda p: p.pop("config"), ("config: expected a JSON object",)),
    ],
    ids=["token_channels", "inner_channels", "dilation", "feature_channels", "scale", "no-sha256", "no-config"],
)
def test_checkpoint_config_is_range_checked_before_any_allocation(
    edited_checkpoint, lr_dir, tmp_path, capsys, edit, needles
):
    _edit_config(edited_checkpoint, edit)
    out = tmp_path / "out"
    code = submit.main(["--run", str(edited_checkpoint), "--input", str(lr_dir), "--output", str(out)])
    _refused(code, _err_lines(capsys), *needles)
    assert not out.exists()


def test_training_config_rejects_absurd_sizes(tmp_path):
    from pipeline.core.config import ConfigError
    from pipeline.model.fusion_config import load_fusion_config

    cfg = tmp_path / "m.yaml"
    cfg.write_text("model:\n  token_channels: 1000000000000\n")
    with pytest.raises(ConfigError, match=r"token_channels: must be >= 1 and <= 1024"):
        load_fusion_config(cfg)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/sr_fusion_edges_pickle_ran"),))


def test_a_pickle_saved_as_model_safetensors_is_one_line_and_never_runs(edited_checkpoint, lr_dir, tmp_path, capsys):
    from pipeline.model.io import write_checksums

    ran = Path("/tmp/sr_fusion_edges_pickle_ran")
    ran.unlink(missing_ok=True)
    (edited_checkpoint / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    write_checksums(edited_checkpoint)
    code = submit.main(["--run", str(edited_checkpoint), "--input", str(lr_dir), "--output", str(tmp_path / "o")])
    _refused(code, _err_lines(capsys), "model.safetensors", "not a readable safetensors file")
    assert not ran.exists()


def test_nan_weights_in_a_checkpoint_are_refused(edited_checkpoint):
    from safetensors.torch import load_file, save_file

    from pipeline.model.io import CheckpointError, load_pretrained

    state = load_file(str(edited_checkpoint / "model.safetensors"))
    first = sorted(state)[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(edited_checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match="hold NaN or Inf"):
        load_pretrained(edited_checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# item 5: a full disk anywhere is one line naming the file, leaves no temp file, and a rerun with space completes
# ---------------------------------------------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_full_disk_while_writing_an_image_is_one_line_and_resumable(
    trained_run, lr_dir, tmp_path, capsys, monkeypatch
):
    import pipeline.core.atomic as atomic

    ref = tmp_path / "ref"
    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(ref)]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    real = atomic._write_all

    def png_fills_the_disk(fd: int, data: bytes) -> None:
        if bytes(data[:4]) == b"\x89PNG":
            real(fd, data[: len(data) // 2])  # half of it made it to the disk
            _no_space()
        real(fd, data)

    with monkeypatch.context() as m:
        m.setattr(atomic, "_write_all", png_fills_the_disk)
        code = submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out)])
    _refused(code, _err_lines(capsys), "0901x4.png", "no space left on the device while writing")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out)]) == 0
    assert _pngs(out) == _pngs(ref)


def test_a_full_disk_while_zipping_leaves_no_temp_zip(trained_run, lr_dir, tmp_path, capsys, monkeypatch):
    import zipfile

    out = tmp_path / "sub"
    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "write", _no_space)
        code = submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out), "--zip"])
    _refused(code, _err_lines(capsys), "sub.zip", "while writing the zip")
    assert sorted(p.name for p in tmp_path.iterdir() if "zip" in p.name) == []  # no .sub.zip.tmp beside it
    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out), "--zip"]) == 0
    assert (tmp_path / "sub.zip").is_file()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """Mount a small tmpfs (``size`` set by the test through the returned function); skipped where mounting is not
    allowed (not root, no CAP_SYS_ADMIN, no mount binary)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({res.stderr.strip() or res.returncode})")

    def resize(size: str) -> Path:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True, capture_output=True)
        return mnt

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _dump_cache(path: Path) -> dict[str, list[torch.Tensor]]:
    from cache.reader import CacheReader

    r = CacheReader(path)
    return {name: [s.lr, s.hr, s.srs] for name, s in ((n, r.read(i)) for i, n in enumerate(r.names))}


@pytest.mark.slow  # ~10 s: extracts twice
def test_extract_onto_a_full_file_system_is_one_line_then_resumes_identically(
    tiny_compact_experts, tiny_tmpfs, tmp_path
):
    """A real full disk (a 256 KiB tmpfs; each cached image takes ~85 KiB): exit status 2 with one line naming the
    file — not an errno-28 traceback followed by a segfault at exit (HDF5 failing to flush) — no temp file left,
    and the same command after freeing space finishes the cache bit-identical to one made on a roomy disk."""
    args = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--hr", str(tiny_compact_experts["hr"])]
    assert program("extract_features").main([*args, "--out", str(tmp_path / "ref.h5")]) == 0
    mnt = tiny_tmpfs("256k")
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "extract_features.py"), *args, "--out", str(mnt / "c.h5")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env=env)  # this tree's code
    lines = [line for line in res.stderr.splitlines() if line.startswith("extract_features:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-2000:]
    assert "no space left on the device while writing" in lines[0] and str(mnt) in lines[0]
    assert not [p.name for p in mnt.rglob("*") if ".tmp" in p.name]
    tiny_tmpfs("8m")  # space freed
    assert program("extract_features").main([*args, "--out", str(mnt / "c.h5")]) == 0
    got, want = _dump_cache(mnt / "c.h5"), _dump_cache(tmp_path / "ref.h5")
    assert got.keys() == want.keys()
    assert all(torch.equal(a, b) for n in got for a, b in zip(got[n], want[n]))


def test_submit_zip_onto_a_full_file_system_leaves_no_temp_zip(trained_run, tiny_tmpfs, tmp_path, capsys):
    lr = tmp_path / "lr3"
    for i in range(3):
        write_image(lr / f"09{i:02d}x4.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(i)))
    ref = tmp_path / "ref"
    assert submit.main(["--run", str(trained_run), "--input", str(lr), "--output", str(ref)]) == 0
    need = sum(p.stat().st_size for p in ref.iterdir())
    mnt = tiny_tmpfs(f"{(need * 3 // 2) // 4096 * 4 + 16}k")  # room for the PNGs and readme, not for the zip too
    out = mnt / "sub"
    code = submit.main(["--run", str(trained_run), "--input", str(lr), "--output", str(out), "--zip"])
    _refused(code, _err_lines(capsys), "sub.zip", "no space left on the device while writing the zip")
    assert sorted(p.name for p in mnt.iterdir()) == ["sub"]  # no .sub.zip.tmp beside the folder
    tiny_tmpfs("4m")
    assert submit.main(["--run", str(trained_run), "--input", str(lr), "--output", str(out), "--zip"]) == 0
    assert _pngs(out) == _pngs(ref) and (mnt / "sub.zip").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# item 6: one writer per output folder
# ---------------------------------------------------------------------------------------------------------------------
def test_a_second_submit_into_the_same_folder_is_refused_before_any_work(trained_run, lr_dir, tmp_path, capsys):
    from pipeline.core.locks import FileLock
    from pipeline.core.outputs import OUTPUT_LOCK

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / OUTPUT_LOCK):  # the first submit, as far as the lock is concerned (flock: per open file)
        code = submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out)])
        _refused(code, _err_lines(capsys), str(out), "is being written right now by pid")
        assert sorted(p.name for p in out.iterdir()) == [OUTPUT_LOCK]  # nothing written, the folder left as it was
    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out)]) == 0
    assert not (out / OUTPUT_LOCK).exists()  # removed on a clean exit


def test_a_second_make_lr_into_the_same_folder_is_refused(tmp_path, capsys):
    from pipeline.core.locks import FileLock
    from pipeline.core.outputs import OUTPUT_LOCK

    hr = tmp_path / "hr"
    write_image(hr / "a.png", torch.rand(1, 3, 32, 32))
    out = tmp_path / "lr"
    with FileLock(out / OUTPUT_LOCK):
        _refused(program("make_lr").main(["--hr", str(hr), "--out", str(out)]), _err_lines(capsys), "being written")
    assert program("make_lr").main(["--hr", str(hr), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".sr-fusion-output", "ax4.png"]


def test_lock_release_deletes_the_file_and_a_racing_holder_of_the_old_file_retries(tmp_path):
    from pipeline.core.locks import FileLock, LockedError

    path = tmp_path / "x.lock"
    first = FileLock(path).acquire()
    with pytest.raises(LockedError, match="pid"):
        FileLock(path).acquire()
    stale = open(path)  # noqa: SIM115 - a process that opened the file just before the holder deleted it
    first.release()
    assert not path.exists()
    import fcntl

    fcntl.flock(stale.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # it can lock the deleted file ...
    second = FileLock(path).acquire()  # ... yet the file at the path is a new one, which a newcomer gets
    assert path.exists()
    second.release()
    stale.close()


# ---------------------------------------------------------------------------------------------------------------------
# item 8: locks removed on a clean exit; the cache lock taken before the experts load; the missing folder named
# ---------------------------------------------------------------------------------------------------------------------
def test_no_lock_file_is_left_after_a_finished_run_and_cache(trained_run, tiny_cache):
    assert not (trained_run / ".lock").exists()
    assert not list(tiny_cache.parent.glob("*.lock*"))  # c.h5.lock.rank0 beside the cache


def test_a_locked_cache_is_refused_before_the_experts_load(tiny_compact_experts, tmp_path, capsys, monkeypatch):
    from cache.writer import lock_cache
    from experts.ensemble import ExpertEnsemble

    loaded = []
    real = ExpertEnsemble.from_spec.__func__
    monkeypatch.setattr(
        ExpertEnsemble, "from_spec", classmethod(lambda cls, *a, **k: loaded.append(1) or real(cls, *a, **k))
    )
    out = tmp_path / "c.h5"
    args = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--hr", str(tiny_compact_experts["hr"])]
    with lock_cache(out):
        code = program("extract_features").main([*args, "--out", str(out)])
    _refused(code, _err_lines(capsys), "being written by another process")
    assert loaded == []  # refused before any expert was loaded
    assert not (tmp_path / "c.h5.lock.rank0").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, a folder nothing can be created in")
def test_an_unwritable_json_path_names_the_missing_folder(tmp_path, capsys):
    hr, sr = tmp_path / "hr", tmp_path / "sr"
    write_image(hr / "a.png", torch.rand(1, 3, 32, 32))
    write_image(sr / "ax4.png", torch.rand(1, 3, 32, 32))
    code = program("evaluate").main(["--sr", str(sr), "--hr", str(hr), "--json", "/proc/nope/x.json"])
    line = _refused(code, _err_lines(capsys), "/proc/nope")
    assert "folder /proc/nope cannot be created" in line


# ---------------------------------------------------------------------------------------------------------------------
# item 7: the committed checkpoints name no path of the machine that made them; a clone anywhere runs them
# ---------------------------------------------------------------------------------------------------------------------
_MACHINE_PATH = re.compile(
    r"(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt|media|data|scratch|opt|srv|var|private)/|(?<![\w])[A-Za-z]:\\\\"
)


def test_no_committed_checkpoint_or_config_names_a_machine_path():
    found = []
    for folder in ("checkpoints", "configs"):
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # weights: no text
            for no, line in enumerate(text.splitlines(), 1):
                if _MACHINE_PATH.search(line) or str(REPO_ROOT.parent) in line:
                    found.append(f"{path.relative_to(REPO_ROOT)}:{no}: {line.strip()}")
    assert found == []


@pytest.mark.slow  # ~11 s: a fresh interpreter in a copy
def test_a_clone_in_another_folder_runs_the_bundled_fusion_without_experts(tmp_path):
    """The code, the bundled fusion and its experts copied to a new folder (a clone elsewhere: its own bundled root);
    submit.py --run checkpoints/fusion_zoo_small finds its experts in the clone by their recorded relative paths —
    every expert file it reads lies inside the clone."""
    clone = tmp_path / "elsewhere" / "sr-fusion"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("pipeline", "experts", "cache"):  # experts/ holds the bundled zoo too
        shutil.copytree(REPO_ROOT / package, clone / package, ignore=skip)
    shutil.copytree(ZOO_FUSION, clone / "checkpoints" / "fusion_zoo_small")
    (clone / "scripts").mkdir()
    shutil.copy2(REPO_ROOT / "scripts" / "submit.py", clone / "scripts" / "submit.py")
    lr = clone / "LR"
    write_image(lr / "0901x4.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(5)))
    probe = (
        "import json, sys\n"
        "read = []\n"
        "sys.addaudithook(lambda e, a: read.append(str(a[0])) if e == 'open' and str(a[0]).endswith("
        "('.safetensors', '.pth')) else None)\n"
        "from pipeline.core import bundled\n"
        "from pipeline.core.cli import run_program\n"
        "code = run_program('scripts/submit.py', ['--run', 'checkpoints/fusion_zoo_small', '--input', 'LR', "
        "'--output', 'OUT', '--device', 'cpu'])\n"
        "print('PROBE', json.dumps({'root': str(bundled.root()), 'read': read, 'code': code}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}  # the clone's code, not this tree's
    res = subprocess.run([sys.executable, "-c", probe], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(res.stdout.split("PROBE ", 1)[1]) if "PROBE " in res.stdout else {}
    assert report.get("code") == 0, res.stderr[-3000:]
    assert Path(report["root"]) == clone
    experts_read = [Path(p) for p in report["read"] if "experts" in Path(p).parts]
    assert len({p.parent.name for p in experts_read}) == 3, report["read"]
    assert all(p.resolve().is_relative_to(clone.resolve()) for p in experts_read), report["read"]
    assert (clone / "OUT" / "0901x4.png").is_file()


def test_a_full_disk_while_saving_a_training_checkpoint_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    import pipeline.core.atomic as atomic

    real = atomic._write_all

    def state_fills_the_disk(fd: int, data: bytes) -> None:
        if bytes(data[:2]) == b"PK":  # torch.save's zip: the training state
            _no_space()
        real(fd, data)

    cfg = trained_run.parents[1] / "cfg.yaml"
    args = [str(cfg), f"train.runs_dir={tmp_path / 'runs'}", "train.name=full", "train.val_every=1000"]
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as m:
            m.setattr(atomic, "_write_all", state_fills_the_disk)
            code = program("train").main(args)
        _refused(code, _err_lines(capsys), "step_00000003", "while writing the training state")
        assert not (tmp_path / "runs" / "full").exists()  # the new run saved nothing: its folder is gone again
        assert program("train").main(args) == 0  # with space again
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (tmp_path / "runs" / "full" / "ckpt").iterdir() if p.name.startswith(".")) == []


def test_report_lists_unpaired_unreadable_and_nested_inputs_in_one_pass(trained_run, tmp_path, capsys):
    """Issue 29 item 3 for report.py: an unpaired SR file, a truncated one and a nested folder in one run."""
    hr, sr = tmp_path / "hr", tmp_path / "sr"
    for name in ("a", "b"):
        write_image(hr / f"{name}.png", torch.rand(1, 3, 32, 32))
    write_image(sr / "ax4.png", torch.rand(1, 3, 32, 32))
    write_image(sr / "zzx4.png", torch.rand(1, 3, 32, 32))  # no HR counterpart
    (sr / "bx4.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (sr / "nested").mkdir()
    args = ["--run", str(trained_run), "--sr", str(sr), "--hr", str(hr), "--out", str(tmp_path / "rep")]
    code = program("report").main([*args, "--device", "cpu"])
    lines = _err_lines(capsys)
    _refused(code, lines, "zzx4.png", "no HR counterpart")
    _refused(code, lines, "bx4.png")
    _refused(code, lines, "nested", "a folder inside the SR folder")
    assert not (tmp_path / "rep").exists()
