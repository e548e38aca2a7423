"""The training loader of cached crops: worker processes fill a fixed ring of shared-memory batch slots.

torch's DataLoader hands every batch over in freshly allocated shared memory: for 8-bit crops of a 64² LR patch and
three experts that is ~12.6 MB a batch whose pages the kernel zeroes and maps anew each time — measured, that capped
two workers at ~1,100 crops/s when one process alone cuts ~4,300. :class:`SlotLoader` allocates
``workers × prefetch`` batch slots once (shared memory, optionally page-locked for CUDA), and each worker
(:class:`cache.dataset.CropBatches`) cuts the crops of the batch it is given straight into a slot.

Batch ``j`` of the sampler is always the same function of its item indices (the worker that fills it does not
matter), and batches come out in the sampler's order, so the stream is identical for any number of workers and a
run resumed at step ``s`` (a sampler starting at ``s``) continues the uninterrupted one.

A yielded batch is a view of its slot: it is valid until the next batch is asked for (the slot is then refilled).
:func:`cache.dataset.finish_batch` copies it (to the device, as float, augmented) before that.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Iterable, Iterator

import torch

from cache.dataset import CropBatches
from pipeline.core.errors import ToolkitError

__all__ = ["LoaderError", "SlotLoader"]


_PARENT_CHECK_S = 1.0  # how often an idle worker checks that the training process is still alive


class LoaderError(ToolkitError, RuntimeError):
    """A loader worker failed (its traceback is in the message) or died."""


def _worker(payload: bytes, slots: list[dict[str, torch.Tensor]], tasks, results, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the training process stops its workers itself
    torch.set_num_threads(1)  # 2-core machines: workers must not oversubscribe the cores the model uses
    batches: CropBatches = pickle.loads(payload)  # own file handles and image store, nothing inherited
    while True:
        # a training process killed outright (SIGKILL, the OOM killer) never sends the stop: its workers, which
        # hold its images in RAM, must not outlive it — a forked worker holds the task pipe's write end too, so it
        # would wait forever
        if not tasks.poll(_PARENT_CHECK_S):
            if os.getppid() != parent:
                return
            continue
        task = tasks.recv()
        if task is None:
            return
        seq, slot, indices = task
        try:
            out = {k: v[: len(indices)] for k, v in slots[slot].items()}
            meta = {k: v.tolist() for k, v in batches.fill(out, indices).items()}  # lists: no tensor pickling
            results.put((seq, slot, meta, None))
        except Exception:  # noqa: BLE001 - reported to the main process, which raises it
            results.put((seq, slot, None, traceback.format_exc()))


class SlotLoader:
    """Batches of ``batches`` (a :class:`CropBatches`) for the index lists of ``sampler`` (one list per batch, at
    most ``batch_size`` items), read by ``workers`` processes (0: in this process) into ``workers × prefetch``
    reused shared-memory slots; ``pin``: page-lock the slots for asynchronous CUDA copies (silently pageable when
    that is not possible)."""

    def __init__(
        self,
        batches: CropBatches,
        *,
        sampler: Iterable[list[int]],
        batch_size: int,
        workers: int,
        prefetch: int = 2,
        pin: bool = False,
    ) -> None:
        if batch_size < 1 or workers < 0 or prefetch < 1:
            raise ValueError(
                f"need batch_size >= 1, workers >= 0, prefetch >= 1; got {batch_size}/{workers}/{prefetch}"
            )
        self.dataset = batches
        self.sampler = sampler
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch
        self.pin = pin
        self.pinned = False  # the slots of the running iteration are page-locked (asynchronous copies are safe)
        self._registered: list[int] = []  # their addresses, as cudaHostRegister-ed

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def _slots(self, n: int) -> list[dict[str, torch.Tensor]]:
        slots = []
        for _ in range(n):
            slot = {}
            for k, (shape, dtype) in self.dataset.shapes(self.batch_size).items():
                t = torch.empty(shape, dtype=dtype)
                slot[k] = t.share_memory_() if self.workers else t
            slots.append(slot)
        return slots

    def _pin(self, slots: list[dict[str, torch.Tensor]]) -> None:
        """Page-lock ``slots`` for asynchronous copies when ``pin`` and CUDA allow (else they stay pageable) — after
        the workers are forked: a driver may keep registered pages out of child processes (MADV_DONTFORK)."""
        self._registered = []
        if not (self.pin and torch.cuda.is_available()):
            return
        try:
            cudart = torch.cuda.cudart()
            for slot in slots:
                for t in slot.values():
                    if int(cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)) != 0:
                        raise RuntimeError("cudaHostRegister failed")
                    self._registered.append(t.data_ptr())
            self.pinned = True
        except (RuntimeError, AttributeError):
            self._unpin()

    def _unpin(self) -> None:
        """Unregister the page-locked slots before their memory is freed (a later registration of memory at the same
        address would otherwise fail)."""
        if self._registered:
            cudart = torch.cuda.cudart()
            for ptr in self._registered:
                cudart.cudaHostUnregister(ptr)
        self._registered = []
        self.pinned = False

    def __iter__(self) -> Iterator[dict]:
        if self.workers == 0:
            slot = self._slots(1)[0]
            self._pin([slot])
            try:
                for indices in self.sampler:
                    out = {k: v[: len(indices)] for k, v in slot.items()}
                    yield {**out, **self.dataset.fill(out, list(indices))}
            finally:
                self._unpin()
            return
        yield from self._iter_workers()

    def _iter_workers(self) -> Iterator[dict]:
        ctx = mp.get_context("fork")
        payload = pickle.dumps(self.dataset)
        slots = self._slots(self.workers * self.prefetch)
        pipes = [ctx.Pipe(duplex=False) for _ in range(self.workers)]  # (worker's end, ours) per worker
        tasks = [send for _, send in pipes]
        results = ctx.Queue()
        procs: list = []
        try:
            for w in range(self.workers):
                p = ctx.Process(target=_worker, args=(payload, slots, pipes[w][0], results, os.getpid()), daemon=True)
                p.start()
                procs.append(p)
            self._pin(slots)  # after the forks
            it = iter(self.sampler)
            free = list(range(len(slots)))
            sent = got = 0
            done: dict[int, tuple[int, dict]] = {}
            exhausted = False
            while True:
                while free and not exhausted:
                    indices = next(it, None)
                    if indices is None:
                        exhausted = True
                        break
                    tasks[sent % self.workers].send((sent, free.pop(), [int(k) for k in indices]))
                    sent += 1
                if got == sent:
                    return
                while got not in done:
                    try:
                        seq, slot, meta, error = results.get(timeout=1.0)
                    except queue.Empty:
                        dead = [p for p in procs if not p.is_alive()]
                        if dead:
                            raise LoaderError(f"loader worker died (exit code {dead[0].exitcode})") from None
                        continue
                    if error is not None:
                        raise LoaderError(f"loader worker failed:\n{error}")
                    done[seq] = (slot, {k: torch.tensor(v) for k, v in meta.items()})
                slot, meta = done.pop(got)
                n = len(meta["aug"])
                yield {**{k: v[:n] for k, v in slots[slot].items()}, **meta}
                free.append(slot)  # the consumer asked for the next batch: this one is no longer read
                got += 1
        finally:
            for send in tasks:
                try:
                    send.send(None)
                except OSError:  # a worker that died: killed below if need be
                    pass
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
            for recv, send in pipes:
                recv.close()
                send.close()
            results.close()
            results.join_thread()
            self._unpin()
