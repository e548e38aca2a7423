"""The report page's inline style sheet, zoom script and Content-Security-Policy (pipeline/report/page.py renders
the page around them): the page loads nothing from elsewhere."""

__all__ = ["CSP", "CSS", "JS"]

CSS = """
:root { --zoom: 3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 20px 28px; color: #1f2328;
       background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; }
h3 { font-size: 16px; margin: 0 0 6px; } h3 small { color: #666; font-weight: normal; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; background: #fff; }
th, td { padding: 3px 8px; border: 1px solid #e1e4e8; text-align: right; white-space: nowrap; }
th { background: #f3f4f6; text-align: center; } td.name { text-align: left; }
table.facts td { text-align: left; border: none; padding: 1px 12px 1px 0; white-space: normal;
                 overflow-wrap: anywhere; } table.facts { background: none; }
.scroll { max-width: 100%; overflow-x: auto; } .scroll table { margin-bottom: 2px; }
h1, h3, p, figcaption { overflow-wrap: anywhere; }
p.nochart { color: #57606a; margin: 4px 0; } .plots p.nochart { flex-basis: 100%; }
.plots svg { max-width: 100%; height: auto; }
tfoot td { font-weight: 600; background: #f3f4f6; }
td.top { font-weight: 700; background: #e6f4ea; } .pos { color: #1a7f37; } .neg { color: #cf222e; }
th.best { background: #fff5cc; }
.notes { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; margin: 10px 0; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plots svg { border: 1px solid #ddd; }
section.image { background: #fff; border: 1px solid #ddd; padding: 12px 14px; margin: 16px 0; }
.row { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #444; text-align: center; max-width: 260px; }
.crops figure figcaption { max-width: none; }
img.crop { width: calc(var(--cw) * var(--zoom) * 1px); image-rendering: pixelated; display: block;
           border: 1px solid #ccc; }
img.zoomable { cursor: zoom-in; }
.ov { position: relative; display: inline-block; line-height: 0; }
.ov img { width: 256px; display: block; }
.ov .box { position: absolute; outline: 2px solid #ff2d2d; box-shadow: 0 0 0 1px #fff; pointer-events: none; }
img.map { width: 240px; display: block; border: 1px solid #ccc; }
.legend { font-size: 12px; } .swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px;
           vertical-align: -1px; border: 1px solid #555; }
.cbar { width: 240px; height: 12px; border: 1px solid #555; }
.cbar-labels { display: flex; justify-content: space-between; width: 240px; font-size: 11px; color: #444; }
.zoombar button { margin-left: 4px; } .zoombar button.active { font-weight: 700; }
#lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.88); display: flex; flex-direction: column;
            align-items: center; justify-content: center; z-index: 10; cursor: zoom-out; }
#lightbox[hidden] { display: none; }
#lightbox img { image-rendering: pixelated; background: #fff; }
#lightbox p { color: #eee; margin: 10px; font-size: 13px; }
"""

JS = """
(function () {
  "use strict";
  var root = document.documentElement;
  var box = null, big = null, caption = null, group = [], pos = 0;
  function fit() {
    var w = big.naturalWidth, h = big.naturalHeight;
    if (!w || !h) { return; }
    var s = Math.min(window.innerWidth * 0.94 / w, window.innerHeight * 0.84 / h);
    if (s >= 1) { s = Math.floor(s); }
    big.style.width = Math.max(1, Math.round(w * s)) + "px";
    big.style.height = Math.max(1, Math.round(h * s)) + "px";
  }
  function build() {
    box = document.createElement("div");
    box.id = "lightbox";
    box.hidden = true;
    big = document.createElement("img");
    big.alt = "";
    big.addEventListener("load", fit);
    caption = document.createElement("p");
    box.appendChild(big);
    box.appendChild(caption);
    box.addEventListener("click", function () { box.hidden = true; });
    document.body.appendChild(box);
  }
  function show(k) {
    pos = (k + group.length) % group.length;
    var img = group[pos];
    big.src = img.getAttribute("src");
    big.alt = img.alt;
    caption.textContent = (img.getAttribute("data-caption") || img.alt) +
      (group.length > 1 ? "   [" + (pos + 1) + "/" + group.length + "; \\u2190 \\u2192 compare, Esc closes]"
                        : "   [Esc closes]");
    if (big.complete) { fit(); }
  }
  function open(img) {
    if (box === null) { build(); }
    var g = img.getAttribute("data-group");
    group = g ? Array.prototype.slice.call(document.querySelectorAll("img[data-group='" + g + "']")) : [img];
    box.hidden = false;
    show(Math.max(0, group.indexOf(img)));
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (t instanceof HTMLImageElement && t.classList.contains("zoomable")) { open(t); }
  });
  document.addEventListener("keydown", function (ev) {
    if (box === null || box.hidden) { return; }
    if (ev.key === "Escape") { box.hidden = true; }
    else if (ev.key === "ArrowRight") { show(pos + 1); }
    else if (ev.key === "ArrowLeft") { show(pos - 1); }
  });
  window.addEventListener("resize", function () { if (box !== null && !box.hidden) { fit(); } });
  Array.prototype.forEach.call(document.querySelectorAll("button[data-zoom]"), function (b) {
    b.addEventListener("click", function () {
      root.style.setProperty("--zoom", b.getAttribute("data-zoom"));
      Array.prototype.forEach.call(document.querySelectorAll("button[data-zoom]"), function (o) {
        o.classList.toggle("active", o === b);
      });
    });
  });
}());
"""

CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
