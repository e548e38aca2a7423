"""ExpertStore: every frozen expert's output computed once, on disk, shared by every command that runs the experts.

The experts never change, yet comparing a new fusion, submitting with another ensemble method or scoring again would
run all of them again (eleven experts ×8 on BSD100: 23 min at one CPU thread, each time). With a store attached
(:attr:`experts.ensemble.ExpertEnsemble.store`), each expert's ``(sr, feat)`` for one input tensor is looked up
before the expert runs and saved after it ran:

* **Key** = sha256 of (store version, what the expert computes — its fingerprint without its name, tags and file
  paths: architecture, checkpoint sha256, hooks, precision, hyperparameters, a code expert's file sha256, class,
  kwargs and data range —, its tiling, the device type, torch's version, the input
  tensor's shape and the sha256 of its bytes). The ×8 self-ensemble passes its eight transformed inputs through the
  same lookup, so both regimes, every fusion, every ensemble method and every command share the entries; another
  checkpoint, tile, device or torch release is another key, never a stale hit.
* **Exact**: the tensors are stored as they came (float32, safetensors: no pickle), so a command with the store gives
  the bytes it gives without it.
* **Crash-safe**: each entry is written to a temporary file, fsynced and renamed: it exists whole or not at all; a
  killed run leaves at most a temp file (ignored, removed by :meth:`ExpertStore.prune`).
* **Verified on read**: the sha256 of every stored tensor is in the file's metadata and checked on every read; an
  entry that fails (bit rot, a truncated copy) is deleted and recomputed, with one line on stderr.
* **Records**: beside the outputs, small checksummed JSON records: each expert's *card* — its fingerprint when it was
  last loaded in full, keyed by what the model is (:mod:`experts.lazy`) — so a command whose outputs are all stored
  starts without loading a single model; and each compared image's expert, peer and oracle *scores*
  (:mod:`pipeline.evaluation.compare`), so a second table for another fusion scores only the fusion's rows. Pruned
  and cleared like the outputs.
* **Bounded**: ``max_bytes`` (default :data:`DEFAULT_MAX_GB`); when a write passes it, the least recently used
  entries are deleted down to 90 % of it. ``sr-fusion store`` shows the size, verifies, prunes or clears it.

Where: ``--store DIR`` on the commands, else ``$SR_FUSION_STORE``, else ``~/.cache/sr-fusion/expert-outputs``;
``--no-store`` runs every expert live.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline.core.errors import ToolkitError, disk_full, is_disk_full

__all__ = ["DEFAULT_MAX_GB", "ENV_VAR", "RECORDS", "ExpertStore", "StoreError", "StoreUsage", "default_store_dir"]

STORE_VERSION = 1
DEFAULT_MAX_GB = 50.0
ENV_VAR = "SR_FUSION_STORE"
_SUFFIX = ".safetensors"
_KEEP_AFTER_PRUNE = 0.9  # a write over the bound prunes down to this fraction of it
# small JSON records beside the outputs: "cards" (experts/lazy.py: an expert's fingerprint after a full load, to start
# without loading it) and "scores" (pipeline/evaluation/compare.py: an image's expert and peer rows)
RECORDS = ("cards", "scores")


class StoreError(ToolkitError, OSError):
    """The store's folder cannot be used (not a folder, not ours)."""


@dataclass(frozen=True)
class StoreUsage:
    entries: int
    bytes: int


def default_store_dir() -> Path:
    """``$SR_FUSION_STORE`` or ``~/.cache/sr-fusion/expert-outputs``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sr-fusion" / "expert-outputs"


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _record_sha(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _read_record(p: Path) -> tuple[dict | None, str | None]:
    """A record file checked against its checksum → (record, None) or (None, the problem)."""
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    record = doc.get("record") if isinstance(doc, dict) else None
    if not isinstance(record, dict) or doc.get("sha256") != _record_sha(record):
        return None, "checksum mismatch in the record"
    return record, None


# fingerprint fields that say where an expert lies or what it is called, not what it computes: the same weights and
# code reached by another path (a portable path in a checkpoint, an absolute one from a YAML, a moved folder) or
# under another name share their entries
_NOT_IDENTITY = ("name", "checkpoint", "tags")
_NOT_CODE_IDENTITY = ("file",)


def _identity(fingerprint: dict) -> dict:
    out = {k: v for k, v in fingerprint.items() if k not in _NOT_IDENTITY}
    if isinstance(out.get("code"), dict):
        out["code"] = {k: v for k, v in out["code"].items() if k not in _NOT_CODE_IDENTITY}
    return out


class ExpertStore:
    """A folder of expert outputs (see the module docstring)."""

    MARKER = ".sr-fusion-expert-store"

    def __init__(self, root: str | os.PathLike, *, max_bytes: int | None = int(DEFAULT_MAX_GB * 1e9)) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"expert store {self.root} exists and is not a folder")
        if self.root.is_dir() and not (self.root / self.MARKER).is_file() and any(self.root.iterdir()):
            raise StoreError(
                f"expert store {self.root} holds files that are not an expert store's (no {self.MARKER}): "
                "refusing to write into it; name another folder with --store"
            )
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # counted on the first write
        self.hits = 0
        self.misses = 0

    def _mark(self) -> None:
        marker = self.root / self.MARKER
        if not marker.is_file():
            marker.write_text("sr-fusion expert output store (experts/store.py); safe to delete\n")

    # ------------------------------------------------------------------------------------------------------- keys
    @staticmethod
    def key(*, fingerprint: dict, tile: int, tile_overlap: int, device: str, x: torch.Tensor) -> str:
        """The entry of one expert's output for input ``x`` (any shape and dtype; its bytes are hashed)."""
        material = {
            "version": STORE_VERSION,
            "expert": _identity(fingerprint),
            "tile": [int(tile), int(tile_overlap)],
            "device": torch.device(device).type,
            "torch": torch.__version__,
            "input": [list(x.shape), str(x.dtype), _tensor_sha(x)],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()

    def summary(self) -> str:
        """What this process took from the store and what it computed, for a command's last line."""
        return f"expert outputs: {self.hits} from the store, {self.misses} computed ({self.root})"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    # ---------------------------------------------------------------------------------------------- read / write
    def _read(self, p: Path) -> tuple[dict[str, torch.Tensor] | None, str | None]:
        """``p``'s tensors checked against the checksums in its metadata → (tensors, None) or (None, the problem)."""
        try:
            with safe_open(p, framework="pt") as f:
                sums = json.loads((f.metadata() or {}).get("sha256", "{}"))
                tensors = {n: f.get_tensor(n) for n in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            return None, f"unreadable ({type(exc).__name__})"
        bad = sorted(n for n, t in tensors.items() if sums.get(n) != _tensor_sha(t)) or sorted(set(sums) ^ set(tensors))
        return (None, f"checksum mismatch in {bad}") if bad else (tensors, None)

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors of ``key`` (CPU), or None when absent. A stored entry that fails its checksums is
        deleted (one line on stderr) and reported absent, so the caller recomputes it."""
        p = self.path(key)
        tensors, problem = self._read(p) if p.is_file() else (None, None)
        if problem is not None:
            print(f"expert store: {p}: {problem}; deleted, recomputing", file=sys.stderr)
            p.unlink(missing_ok=True)
        if tensors is None:
            self.misses += 1
            return None
        try:
            os.utime(p)  # least recently used is pruned first
        except OSError:
            pass
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``key`` (atomically; an existing entry is left as it is)."""
        p = self.path(key)
        if p.is_file():
            return
        cpu = {n: t.detach().contiguous().cpu() for n, t in tensors.items()}
        meta = {"sha256": json.dumps({n: _tensor_sha(t) for n, t in cpu.items()}, sort_keys=True)}
        self._write(p, lambda tmp: save_file(cpu, tmp, metadata=meta), what="an expert output")
        size = p.stat().st_size
        with self._lock:
            if self._bytes is None:
                self._bytes = self.usage().bytes
            else:
                self._bytes += size
            over = self.max_bytes is not None and self._bytes > self.max_bytes
        if over:
            self.prune(int(self.max_bytes * _KEEP_AFTER_PRUNE))

    # -------------------------------------------------------------------------------------------------- records
    def record_path(self, kind: str, key: str) -> Path:
        if kind not in RECORDS:
            raise ValueError(f"record kind {kind!r} is not one of {RECORDS}")
        return self.root / kind / f"{key}.json"

    def get_record(self, kind: str, key: str) -> dict | None:
        """The small JSON record of ``kind`` (:data:`RECORDS`) stored under ``key``, or None; one that fails its
        checksum is deleted (one line on stderr) and reported absent."""
        p = self.record_path(kind, key)
        if not p.is_file():
            return None
        record, problem = _read_record(p)
        if problem is not None:
            print(f"expert store: {p}: {problem}; deleted, recomputing", file=sys.stderr)
            p.unlink(missing_ok=True)
        elif record is not None:
            try:
                os.utime(p)  # least recently used is pruned first
            except OSError:
                pass
        return record

    def put_record(self, kind: str, key: str, record: dict) -> None:
        """Store ``record`` (a JSON-serialisable dict) under ``key``, atomically, with its checksum."""
        p = self.record_path(kind, key)
        text = json.dumps({"record": record, "sha256": _record_sha(record)}, sort_keys=True)
        self._write(p, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=f"a record ({kind})")

    def _write(self, p: Path, write: Callable[[Path], object], *, what: str) -> None:
        """``write(tmp)`` to a temporary file beside ``p``, fsynced and renamed onto ``p``: whole or not at all."""
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self._mark()
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full(p, f"{what} for the store (--no-store runs without it)", exc) from None
            raise

    # ------------------------------------------------------------------------------------------------ maintenance
    def _entries(self) -> list[Path]:
        """Every stored output and record (records are tiny; pruning and clearing treat them like outputs)."""
        if not self.root.is_dir():
            return []
        records = [f for k in RECORDS for f in sorted(self.root.glob(f"{k}/*.json"))]
        return sorted(self.root.glob(f"??/*{_SUFFIX}")) + records

    def usage(self) -> StoreUsage:
        files = self._entries()
        return StoreUsage(entries=len(files), bytes=sum(f.stat().st_size for f in files))

    def prune(self, max_bytes: int) -> StoreUsage:
        """Delete least recently used entries (and stale temp files) until the store holds at most ``max_bytes``
        → what was removed."""
        stale = [*self.root.glob("??/.*.tmp-*"), *(t for k in RECORDS for t in self.root.glob(f"{k}/.*.tmp-*"))]
        stale = stale if self.root.is_dir() else []
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        files = [(f.stat().st_mtime, f.stat().st_size, f) for f in self._entries()]
        total = sum(s for _, s, _ in files)
        removed = freed = 0
        for _, size, f in sorted(files, key=lambda t: (t[0], str(t[2]))):
            if total <= max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            removed += 1
            freed += size
        with self._lock:
            self._bytes = total
        return StoreUsage(entries=removed, bytes=freed)

    def verify(self) -> list[str]:
        """Re-read every entry against its checksums → one line per bad entry (each deleted, as on a read)."""
        problems = []
        for f in self._entries():
            _, problem = _read_record(f) if f.parent.name in RECORDS else self._read(f)
            if problem is not None:
                f.unlink(missing_ok=True)
                problems.append(f"{f}: {problem} (deleted)")
        return problems
