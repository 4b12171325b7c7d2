"""Exact minibatch OT solved on host threads one chunk ahead of the device.

The batches of the next chunk are drawn on the device (the same ``(key, step)`` draws as
inside the step), copied to the host, and their assignments solved by ``workers`` threads
(POT and SciPy release the GIL) while the device trains the current chunk. ``result`` hands
the permutations, shape ``(chunk, batch)``, to the compiled chunk, which only gathers
``x1[perm]``. The pairs are exactly those of the in-step solve.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from ._devices import _replicate, _to_host
from .couplings import _by_class


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class AssignmentPipeline:
    """Draw, copy and solve chunk ``k + 1`` while chunk ``k`` trains."""

    def __init__(self, draw_fn, solve, workers, chunk, batch, put_start, key, data, mesh):
        self.draw_fn, self.solve, self.chunk, self.batch = draw_fn, solve, chunk, batch
        self.put_start, self.key, self.data, self.mesh = put_start, key, data, mesh
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers)
        self.drawn = None  # (start, n, device arrays)
        self.pending = None  # (start, n, futures)

    def draw(self, start: int, n: int) -> None:
        self.drawn = (start, n, self.draw_fn(self.put_start(start), self.key, *self.data))

    def _solve_block(self, x0, x1, y) -> np.ndarray:
        return np.stack([_by_class(self.solve, a, b, None if y is None else y[i])
                         for i, (a, b) in enumerate(zip(x0, x1, strict=True))])

    def solve_ahead(self) -> None:
        if self.drawn is None:
            return
        start, n, (x0, x1, y) = self.drawn
        self.drawn = None
        x0, x1 = _to_host(x0)[:n], _to_host(x1)[:n]
        y = None if y is None else _to_host(y)[:n]
        size = -(-n // (4 * self.workers))  # about four blocks per thread
        futures = [self.pool.submit(self._solve_block, x0[lo:lo + size], x1[lo:lo + size],
                                    None if y is None else y[lo:lo + size])
                   for lo in range(0, n, size)]
        self.pending = (start, n, futures)

    def result(self, start: int, n: int) -> jax.Array:
        if self.pending is None or self.pending[:2] != (start, n):
            self.draw(start, n)
            self.solve_ahead()
        _, _, futures = self.pending
        self.pending = None
        perms = np.tile(np.arange(self.batch, dtype=np.int32), (self.chunk, 1))
        perms[:n] = np.concatenate([f.result() for f in futures])
        return _replicate(perms, self.mesh)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
