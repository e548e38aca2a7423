"""scripts/report.py: the HTML report of a trained run (tables, crops, maps, curves), its library pieces, the input
checks — and the page rendered in headless Chromium (every image loads, no console error, zoom works, nothing is
fetched from outside the report folder)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import program

from pipeline.core.imageio import image_size, quantize_8bit, read_image, write_image
from pipeline.evaluation.scoring import pair_images, score_fidelity
from pipeline.inference.pipeline import load_pipeline
from pipeline.report.page import MetricsError, read_metrics_csv, thin
from pipeline.report.svg_plot import Series, line_plot_svg, log_ticks, nice_ticks
from pipeline.report.visual import VIRIDIS, box_mean, choose_crop, colormap, gate_composite

make_lr = program("make_lr")
report = program("report")
submit = program("submit")


# ---------------------------------------------------------------------------------------------------------------------
# library pieces
# ---------------------------------------------------------------------------------------------------------------------
def test_colormap_endpoints_clipping_and_errors():
    v = torch.tensor([[0.0, 0.5, 1.0], [-3.0, 7.0, 0.25]])
    rgb = colormap(v)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, 0], VIRIDIS[0], atol=1e-6)
    np.testing.assert_allclose(rgb[0, 2], VIRIDIS[-1], atol=1e-6)
    np.testing.assert_allclose(rgb[0, 1], VIRIDIS[8], atol=1e-6)  # 17 anchors: 0.5 is anchor 8
    np.testing.assert_allclose(rgb[1, 0], VIRIDIS[0], atol=1e-6)  # clipped below / above
    np.testing.assert_allclose(rgb[1, 1], VIRIDIS[-1], atol=1e-6)
    luma = colormap(np.linspace(0, 1, 50)[None]) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma[0]) > 0)  # perceptually ordered: brightness rises monotonically
    with pytest.raises(ValueError, match="NaN"):
        colormap(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="vmax"):
        colormap(v, vmin=1.0, vmax=1.0)


def test_gate_composite_mixes_expert_colours():
    gates = torch.zeros(1, 3, 2, 2)
    gates[0, 0, 0, 0] = 1.0  # pure expert 0
    gates[0, :, 1, 1] = 1 / 3  # equal weights
    gates[0, 2, 0, 1] = gates[0, 2, 1, 0] = 1.0
    rgb = gate_composite(gates)
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].argmax() == 0 and rgb[0, 1].argmax() == 2
    assert np.ptp(rgb[1, 1]) < 0.1  # 3 experts, equal weights → grey


def test_box_mean_and_choose_crop_find_the_differing_patch():
    x = np.arange(30, dtype=np.float64).reshape(5, 6)
    bm = box_mean(x, (2, 3))
    assert bm.shape == (4, 4) and bm[1, 2] == pytest.approx(x[1:3, 2:5].mean())
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 40, 50, generator=g)
    b = a.clone()
    b[..., 21:29, 30:38] += 0.2  # an 8×8 patch differs
    box = choose_crop(a, b, size=8)
    assert (box.top, box.left, box.height, box.width) == (21, 30, 8, 8)
    big = choose_crop(a, b, size=100)  # larger than the image: clipped to it
    assert (big.top, big.left, big.height, big.width) == (0, 0, 40, 50)


def test_svg_plot_is_well_formed_and_handles_edge_cases():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.013, 0.047, count=4) == [0.02, 0.03, 0.04]
    assert log_ticks(0.05, 3) == [0.05, 0.1, 0.2, 0.5, 1, 2]
    svg = line_plot_svg(
        [
            Series(label="a<b", steps=(1, 2, 3), values=(1.0, float("nan"), 3.0), colour="#f00"),
            Series(label="one", steps=(2,), values=(2.0,)),
            Series(label="none", steps=(), values=()),
        ],
        title="T & t",
        xlabel="step",
        ylabel="dB",
    )
    root = ET.fromstring(svg)  # well-formed XML, labels escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f".//{ns}polyline")) == 1  # NaN dropped → 2 points; one point → a dot only
    assert len(root.findall(f".//{ns}circle")) == 3
    assert "a&lt;b" in svg and "T &amp; t" in svg
    log = ET.fromstring(
        line_plot_svg(
            [Series(label="l", steps=(1, 2), values=(0.5, 0.01))], title="", xlabel="", ylabel="loss", log_y=True
        )
    )
    assert any(t.text == "0.1" for t in log.iter(f"{ns}text"))
    empty = line_plot_svg([Series(label="x", steps=(), values=())], title="E", xlabel="", ylabel="", empty_text="nix")
    assert "nix" in ET.tostring(ET.fromstring(empty), encoding="unicode")


def test_read_metrics_csv_and_thin(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,tag,value\n1,train/loss,0.5\n2,train/loss,0.25\n2,val/psnr,30.5\n")
    m = read_metrics_csv(p)
    assert m == {"train/loss": ((1.0, 2.0), (0.5, 0.25)), "val/psnr": ((2.0,), (30.5,))}
    p.write_text("step,tag,value\n1,train/loss,zero\n")
    with pytest.raises(MetricsError, match="line 2"):
        read_metrics_csv(p)
    with pytest.raises(MetricsError, match="no such file"):
        read_metrics_csv(tmp_path / "missing.csv")
    s, v = thin(list(range(10)), [float(i) for i in range(10)], 5)
    assert s == v == (0.5, 2.5, 4.5, 6.5, 8.5)


# ---------------------------------------------------------------------------------------------------------------------
# the script on a tiny trained run
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_case(trained_run, tiny_compact_experts, tmp_path_factory) -> dict:
    """HR (one side not a multiple of 4) → make_lr → submit → report (LR made from HR by the report itself)."""
    root = tmp_path_factory.mktemp("report")
    hr_dir, lr_dir, sr_dir, out = root / "hr", root / "lr", root / "sr", root / "report"
    src = sorted(tiny_compact_experts["hr"].glob("*.png"))
    hr_dir.mkdir()
    shutil.copy(src[0], hr_dir / "a.png")
    shutil.copy(src[1], hr_dir / "b.png")
    write_image(hr_dir / "odd.png", read_image(src[2])[..., :70, :90])  # cropped to 68×88 for scoring
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert make_lr.main(["--hr", str(hr_dir), "--out", str(lr_dir)]) == 0
        assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(sr_dir)]) == 0
        assert (
            report.main(
                [
                    "--run",
                    str(trained_run),
                    "--sr",
                    str(sr_dir),
                    "--hr",
                    str(hr_dir),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--crop",
                    "32",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "hr": hr_dir, "lr": lr_dir, "sr": sr_dir, "out": out, "run": trained_run}


def _attr_values(html: str, attr: str) -> list[str]:
    return re.findall(rf'\s{attr}="([^"]*)"', html)


def test_report_page_scores_and_files(report_case):
    out = report_case["out"]
    html = (out / "index.html").read_text()
    data = json.loads((out / "scores.json").read_text())
    assert [i["name"] for i in data["images"]] == ["a", "b", "odd"]
    assert data["methods"] == ["bicubic", "expert:noisy", "expert:calm", "mean", "fusion"]

    # the fusion column is the submitted images, scored exactly like scripts/evaluate.py
    rows = score_fidelity(pair_images(report_case["sr"], report_case["hr"], scale=4), scale=4)
    for row, img in zip(rows, data["images"], strict=True):
        assert img["scores"]["fusion"] == {"psnr": row["psnr"], "ssim": row["ssim"]}
        assert f"{row['psnr']:.3f}" in html
    # best expert = highest mean PSNR over the set, marked in the table; mean row = mean of the rows
    experts = {k: v["psnr"] for k, v in data["mean"].items() if k.startswith("expert:")}
    assert data["best_expert"] == max(experts, key=experts.get).removeprefix("expert:")
    assert f"{data['best_expert']} ★ best" in html and "mean (3 images)" in html
    for key, mean in data["mean"].items():
        assert mean["psnr"] == pytest.approx(sum(i["scores"][key]["psnr"] for i in data["images"]) / 3)
    # the crop lies where the fusion differs most from the best expert: re-derive it for one image
    pipe = load_pipeline(report_case["run"])
    with torch.inference_mode():
        srs, _ = pipe.ensemble(read_image(report_case["lr"] / "oddx4.png"))
    best = quantize_8bit(srs[:, list(pipe.ensemble.names).index(data["best_expert"])])
    box = choose_crop(read_image(report_case["sr"] / "oddx4.png"), best, size=32)
    assert data["images"][2]["crop"] == {"left": box.left, "top": box.top, "width": 32, "height": 32}

    # every referenced file exists, nothing points outside the report folder, no other PNG lingers
    srcs = _attr_values(html, "src")
    assert srcs and all(not re.match(r"^[a-z]+:", s) and not s.startswith("/") and ".." not in s for s in srcs)
    assert all((out / s).is_file() for s in srcs)
    assert {f"img/{p.name}" for p in (out / "img").glob("*.png")} == set(srcs)
    assert all(h.startswith(("#", "data:")) for h in _attr_values(html, "href"))
    assert "<script src" not in html and "stylesheet" not in html
    # per image: overview + bicubic/2 experts/fusion/HR crops + composite + 2 gate maps + difficulty
    assert len(srcs) == 3 * (1 + 5 + 1 + 2 + 1)
    assert image_size(out / "img/002_crop0.png") == (32, 32)
    assert image_size(out / "img/002_gates.png") == (68, 88) == image_size(out / "img/002_difficulty.png")
    # training curves from metrics.csv: loss, validation PSNR (fusion + 2 experts + mean), gain, gates
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 4
    for svg in svgs:
        ET.fromstring(svg)
    assert "Validation PSNR-Y" in svgs[1] and svgs[1].count("<polyline") == 4
    assert "re-run" not in html  # the submitted images are exactly this run's fusion


def test_report_with_lr_folder_overwrites_its_own_report(report_case):
    """--lr with the LR images the submission was made from gives the same numbers as LR made from HR; writing
    into a folder holding an earlier report replaces it and drops PNGs the new page does not use."""
    c = report_case
    out = c["root"] / "report_lr"
    shutil.copytree(c["out"], out)
    stale = out / "img" / "999_crop0.png"
    shutil.copy(out / "img" / "000_crop0.png", stale)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            report.main(
                [
                    "--run",
                    str(c["run"]),
                    "--sr",
                    str(c["sr"]),
                    "--hr",
                    str(c["hr"]),
                    "--lr",
                    str(c["lr"]),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--crop",
                    "32",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    assert not stale.exists()
    assert json.loads((out / "scores.json").read_text()) == json.loads((c["out"] / "scores.json").read_text())


def test_submission_made_with_tta_is_flagged(report_case, tmp_path):
    """SR images that are not a plain re-run of the fusion (here: x8 self-ensemble) are scored as given and flagged."""
    c = report_case
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            submit.main(
                [
                    "--run",
                    str(c["run"]),
                    "--input",
                    str(c["lr"]),
                    "--output",
                    str(tmp_path / "sr"),
                    "--self-ensemble",
                    "pipeline-x8",
                ]
            )
            == 0
        )
        assert (
            report.main(
                [
                    "--run",
                    str(c["run"]),
                    "--sr",
                    str(tmp_path / "sr"),
                    "--hr",
                    str(c["hr"]),
                    "--out",
                    str(tmp_path / "out"),
                    "--device",
                    "cpu",
                    "--crop",
                    "16",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    html = (tmp_path / "out" / "index.html").read_text()
    assert "3 of 3 submitted images differ from a plain re-run" in html
    rows = score_fidelity(pair_images(tmp_path / "sr", c["hr"], scale=4), scale=4)
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [i["scores"]["fusion"]["psnr"] for i in data["images"]] == [r["psnr"] for r in rows]


def test_bad_inputs_are_refused_before_any_work(report_case, tmp_path, capsys):
    c = report_case

    def run(*, run_dir=None, sr=None, hr=None, lr=None, out=None):
        args = [
            "--run",
            str(run_dir or c["run"]),
            "--sr",
            str(sr or c["sr"]),
            "--hr",
            str(hr or c["hr"]),
            "--out",
            str(out or tmp_path / "out"),
            "--device",
            "cpu",
        ]
        code = report.main(args + (["--lr", str(lr)] if lr else []))
        return code, capsys.readouterr().err

    code, err = run(sr=tmp_path / "nope")
    assert code == 2 and "--sr folder not found" in err
    sr2 = tmp_path / "sr2"
    shutil.copytree(c["sr"], sr2)
    write_image(sr2 / "extrax4.png", torch.rand(1, 3, 8, 8))
    code, err = run(sr=sr2)
    assert code == 2 and "extrax4.png" in err and "no HR counterpart" in err
    (sr2 / "extrax4.png").unlink()
    write_image(sr2 / "ax4.png", torch.rand(1, 3, 92, 96))
    code, err = run(sr=sr2)
    assert code == 2 and "size mismatch" in err and "ax4.png" in err
    lr2 = tmp_path / "lr2"
    shutil.copytree(c["lr"], lr2)
    (lr2 / "bx4.png").unlink()
    write_image(lr2 / "ax4.png", torch.rand(1, 3, 20, 24))
    code, err = run(lr=lr2)
    assert code == 2 and "no LR image" in err and "b" in err and "ax4.png is 24x20" in err
    run2 = tmp_path / "run"
    shutil.copytree(c["run"], run2, symlinks=True)
    (run2 / "metrics.csv").unlink()
    code, err = run(run_dir=run2)
    assert code == 2 and "no metrics.csv" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    code, err = run(out=busy)
    assert code == 2 and "holds files this tool did not write (thesis.tex)" in err and (busy / "thesis.tex").exists()
    code, err = run(out=c["hr"])
    assert code == 2 and "is an input folder" in err
    assert not (tmp_path / "out").exists()  # every refusal came before anything was written


# ---------------------------------------------------------------------------------------------------------------------
# the page in a real browser
# ---------------------------------------------------------------------------------------------------------------------
def chromium_path() -> str:
    """The chromium executable; skips when absent, fails when CI requires it (REQUIRE_SHARED=1)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("REQUIRE_SHARED") == "1":
            pytest.fail("REQUIRE_SHARED=1 but chromium is not installed (apt-get install -y chromium; .ci/run does it)")
        pytest.skip("needs chromium for the browser check (apt-get install -y chromium)")
    return exe


class DevTools:
    """Headless Chromium driven over the DevTools protocol on pipes (``--remote-debugging-pipe``): the browser reads
    NUL-terminated JSON commands on its fd 3 and writes replies and events on its fd 4. Stdlib only."""

    def __init__(self, exe: str, profile: Path, *, timeout: float = 30.0) -> None:
        self.timeout, self.next_id, self.events, self.buf = timeout, 0, [], b""
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        # move the child's ends above fd 10, so "3<&a 4>&b" below cannot clobber one with the other
        a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(ev_w, fcntl.F_DUPFD, 10)
        for fd in (cmd_r, ev_w):
            os.close(fd)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.log = open(profile.parent / "chromium.log", "wb")
        bash = shutil.which("bash") or "/bin/bash"  # dash's redirections take single-digit fds only
        self.proc = subprocess.Popen(
            [bash, "-c", f'exec "$0" "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-', exe, *flags],
            pass_fds=(a, b),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        os.close(a)
        os.close(b)
        self.w, self.r = cmd_w, ev_r

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium in time (see chromium.log)")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read_message(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def evaluate(self, session: str, expression: str):
        r = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.w, self.r):
            os.close(fd)
        self.log.close()


def page_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser-reported errors (failed loads, CSP violations)."""
    errors = []
    for m in events:
        p = m.get("params", {})
        if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(
                "console."
                + p["type"]
                + ": "
                + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            )
        elif m.get("method") == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')}")
    return errors


@pytest.fixture
def chromium() -> str:
    return chromium_path()


def test_report_renders_in_headless_chromium(chromium, report_case, tmp_path):
    """``chromium`` comes first: without a browser the test skips before the report is built."""
    exe = chromium
    index = report_case["out"] / "index.html"
    browser = DevTools(exe, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": index.as_uri()}, session)
        browser.wait_event("Page.loadEventFired")
        images = browser.evaluate(
            session,
            "Array.from(document.images).map(i => "
            "({src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth}))",
        )
        # the page's script works: a zoom button rescales the crops (nearest neighbour); a click opens the
        # enlarged view, the arrow keys step through the other methods' crops of the same place
        ui = browser.evaluate(
            session,
            """(async () => {
            const crop = document.querySelector('img.crop');
            const w3 = crop.getBoundingClientRect().width;
            document.querySelector('button[data-zoom="6"]').click();
            const w6 = crop.getBoundingClientRect().width;
            crop.click();
            const box = document.getElementById('lightbox'), big = box.querySelector('img');
            await new Promise(r => big.complete && big.naturalWidth ? r() : big.addEventListener('load', r));
            const first = big.getAttribute('src');
            document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}));
            const second = big.getAttribute('src');
            await new Promise(r => big.complete && big.naturalWidth ? r() : big.addEventListener('load', r));
            const shown = !box.hidden, bigW = big.getBoundingClientRect().width, natural = big.naturalWidth;
            document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
            return {w3, w6, natural: crop.naturalWidth, shown, first, second, bigW, bigNatural: natural,
                    rendering: getComputedStyle(crop).imageRendering, closed: box.hidden};
        })()""",
        )
        time.sleep(0.2)  # let late console messages arrive
        browser.evaluate(session, "1")
        events = browser.events
    finally:
        browser.close()

    html = index.read_text()
    assert len(images) == html.count("<img ") > 0
    assert [i for i in images if not (i["complete"] and i["w"] > 0)] == []
    assert page_errors(events) == []
    urls = [m["params"]["request"]["url"] for m in events if m.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert ui["w3"] == pytest.approx(3 * ui["natural"], abs=1) and ui["w6"] == pytest.approx(6 * ui["natural"], abs=1)
    assert ui["rendering"] == "pixelated"
    assert ui["shown"] and ui["closed"] and ui["bigW"] >= 4 * ui["bigNatural"]
    assert ui["first"].endswith("_crop0.png") and ui["second"].endswith("_crop1.png")


# ---------------------------------------------------------------------------------------------------------------------
# a page that fits a laptop: charts with nothing to show, the smoothed loss, titles, widths in a real browser
# ---------------------------------------------------------------------------------------------------------------------
def test_training_plots_smooth_the_loss_and_replace_empty_charts_by_one_line():
    from pipeline.report.page import smooth, training_plots

    g = torch.Generator().manual_seed(0)
    noisy = tuple(float(0.03 + 0.007 * torch.randn(1, generator=g)) for _ in range(120))  # the quickstart's loss
    trend = smooth(noisy, span=120 / 25)
    assert trend[0] == noisy[0] and len(trend) == 120  # debiased: starts at the first value
    assert np.std(np.diff(trend)) < 0.25 * np.std(np.diff(noisy))
    assert np.isnan(smooth((1.0, float("nan"), 1.0), span=3)[1])  # a NaN step stays NaN, the trend goes on
    metrics = {"train/loss": (tuple(range(1, 121)), noisy)}  # a run without validation and without a gate
    plots = training_plots(metrics, experts=["a", "b"], colours=[(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)])
    assert plots[0].startswith("<svg") and plots[0].count("<polyline") == 2  # the raw curve faint, the trend on top
    assert '<g opacity="0.25">' in plots[0] and 'stroke-opacity="0.25"' in plots[0] and "smoothed" in plots[0]
    assert plots[1:] == [
        '<p class="nochart"><b>Validation PSNR-Y</b>: none logged — the run had no validation set (data.val_cache)</p>',
        '<p class="nochart"><b>Mean gate per expert</b>: none logged (this fusion has no per-expert gate)</p>',
    ]


def test_report_title_is_in_the_users_words(report_case, monkeypatch):
    from pipeline.report.analyse import _under, default_title

    html = (report_case["out"] / "index.html").read_text()
    assert "<h1>Fusion of noisy and calm on 3 images</h1>" in html
    assert report_case["run"].name not in re.search(r"<h1>(.*?)</h1>", html).group(1)
    assert default_title([f"e{i}" for i in range(11)], 1) == "Fusion of 11 experts (e0, e1, e2, …) on 1 image"
    assert "per-pixel gating of the 2 experts" in html  # the network, as the submission's readme describes it
    ckpt = re.search(r"<tr><td>checkpoint</td><td>(.*?) \(step", html).group(1)
    assert ckpt.startswith(f"{report_case['run']}/ckpt/")  # under the run folder as it was given
    monkeypatch.chdir(report_case["run"].parent)  # ... also when it was given relative to the working folder
    relative = Path(report_case["run"].name)
    assert _under(Path(ckpt), relative) == relative / Path(ckpt).relative_to(report_case["run"])


def _wide_page(folder: Path) -> Path:
    """A report of eleven experts with long names and long paths (a table far wider than 1280 px), no curves."""
    from pipeline.report.page import ImageSection as Section
    from pipeline.report.page import Method, ReportPage, Score, Tile, render_page, training_plots
    from pipeline.report.visual import CropBox

    names = [f"team{i:02d}_efficient_sr_model" for i in range(11)]
    (folder / "img").mkdir(parents=True)
    write_image(folder / "img" / "x.png", torch.rand(1, 3, 32, 32))
    methods = (
        Method("bicubic", "bicubic"),
        *(Method(f"expert:{n}", n) for n in names),
        Method("mean", "experts' mean"),
        Method("fusion", "fusion"),
    )
    scores = {m.key: Score(psnr=30.0 + 0.01 * k, ssim=0.9) for k, m in enumerate(methods)}
    tile = Tile(label="x", src="img/x.png")
    section = Section(
        name="a_photo_with_a_rather_long_file_name_" * 3,
        height=128,
        width=128,
        scores=scores,
        box=CropBox(top=0, left=0, height=32, width=32),
        box_reason="where the fusion differs most",
        overview=tile,
        crops=(tile,) * 14,
        gate_composite=None,
        gate_maps=(),
        difficulty=None,
    )
    colours = [(0.2, 0.4, 0.6)] * 11
    page = ReportPage(
        title="Fusion of 11 experts on 1 image",
        facts=(("run", "/a/very/long/folder/name/that/goes/on" * 8), ("experts", ", ".join(names))),
        methods=methods,
        best_key=f"expert:{names[0]}",
        experts=tuple(names),
        expert_colours=tuple(colours),
        images=(section,),
        plots=tuple(training_plots({}, experts=names, colours=colours)),
    )
    (folder / "index.html").write_text(render_page(page))
    return folder / "index.html"


WIDTHS = ((1280, 800), (1920, 1080))


def _layout_at(browser: DevTools, session: str, url: str, width: int, height: int) -> dict:
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    browser.call("Page.navigate", {"url": url}, session)
    browser.wait_event("Page.loadEventFired")
    browser.events = [m for m in browser.events if m.get("method") != "Page.loadEventFired"]
    return browser.evaluate(
        session,
        """(() => {
        const doc = document.documentElement, box = document.querySelector('.scroll');
        const rect = box.getBoundingClientRect();
        return {view: doc.clientWidth, page: doc.scrollWidth, body: document.body.scrollWidth,
                box: box.clientWidth, table: box.scrollWidth, boxRight: rect.right, inner: window.innerWidth,
                nochart: document.querySelectorAll('p.nochart').length};
    })()""",
    )


def test_report_fits_1280_and_1920_wide_windows_in_chromium(chromium, report_case, tmp_path):
    """No horizontal overflow of the page at 1280×800 and 1920×1080: a wide score table scrolls inside its own box."""
    wide = _wide_page(tmp_path / "wide")
    browser = DevTools(chromium, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        layouts = {
            (name, w): _layout_at(browser, session, index.as_uri(), w, h)
            for name, index in (("report", report_case["out"] / "index.html"), ("wide", wide))
            for w, h in WIDTHS
        }
        errors = page_errors(browser.events)
    finally:
        browser.close()
    assert errors == []
    for (name, w), got in layouts.items():
        assert got["inner"] == w, got
        assert got["page"] <= got["view"] and got["body"] <= got["view"], (name, w, got)  # no page overflow
        assert got["boxRight"] <= got["view"], (name, w, got)
    assert layouts[("wide", 1280)]["table"] > layouts[("wide", 1280)]["box"]  # it scrolls in its box instead
    assert layouts[("wide", 1280)]["nochart"] == 3
