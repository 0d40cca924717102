"""Sampling training windows: :class:`WindowSampler` draws windows of ``block_size + 1`` tokens without
replacement within an epoch (a fresh permutation and a fresh start offset each epoch), gives each
distributed rank disjoint windows, and its position (epoch, cursor) is saved in checkpoints so a
resumed run sees the same batches as an uninterrupted one. :func:`fixed_batches` gives the same
validation windows at every evaluation."""
from __future__ import annotations

from ..errors import ZooError


class WindowSampler:
    """Windows of ``block_size + 1`` tokens from a list of token arrays, without replacement within
    an epoch.

    Each epoch chooses a random start offset in [0, block_size) for every array, cuts it into
    non-overlapping windows from there, and shuffles all windows with a generator seeded by
    (seed, epoch). A step takes the next ``global_batch`` windows; rank r of w takes its contiguous
    share of them, so ranks see disjoint data and the union over ranks is the same for any world
    size. ``state()``/``load_state()`` carry the position across a resume.
    """

    def __init__(self, arrays, block_size: int, seed: int = 0):
        self.arrays = [a for a in arrays if len(a) > block_size]
        self.block_size = block_size
        self.seed = seed
        if not self.arrays:
            longest = max((len(a) for a in arrays), default=0)
            raise ZooError(f"the data is shorter than the context: {longest} tokens, but a training window "
                           f"needs block_size + 1 = {block_size + 1}. Use more data or a smaller block_size "
                           f"(--set block_size=N).")
        self.epoch, self.cursor = 0, 0
        self._order = None

    def _build(self):
        import numpy as np
        rng = np.random.default_rng([self.seed, self.epoch])
        win, starts, which = self.block_size + 1, [], []
        for i, a in enumerate(self.arrays):
            off = int(rng.integers(0, self.block_size)) if len(a) - win >= self.block_size else 0
            s = np.arange(off, len(a) - win + 1, self.block_size, dtype=np.int64)  # window starts
            starts.append(s)
            which.append(np.full(len(s), i, dtype=np.int64))
        starts, which = np.concatenate(starts), np.concatenate(which)
        perm = rng.permutation(len(starts))
        self._order = (which[perm], starts[perm])

    def windows_per_epoch(self) -> int:
        if self._order is None:
            self._build()
        return len(self._order[0])

    def next_indices(self, n: int):
        """The next n (array, start) pairs, moving to a new epoch when this one runs out."""
        out = []
        while len(out) < n:
            if self._order is None:
                self._build()
            which, starts = self._order
            take = min(n - len(out), len(which) - self.cursor)
            out += list(zip(which[self.cursor:self.cursor + take].tolist(), starts[self.cursor:self.cursor + take].tolist()))
            self.cursor += take
            if self.cursor >= len(which):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return out

    def gather(self, idx):
        """(array, start) pairs -> x, y int64 tensors of shape (len(idx), block_size)."""
        import numpy as np
        import torch
        win = np.stack([np.asarray(self.arrays[a][s:s + self.block_size + 1], dtype=np.int64) for a, s in idx])
        t = torch.from_numpy(win)  # (B, T+1)
        return t[:, :-1], t[:, 1:]  # (B, T), (B, T)

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state(self, st: dict):
        self.epoch, self.cursor, self.seed, self._order = int(st["epoch"]), int(st["cursor"]), int(st["seed"]), None


def fixed_batches(arrays, block_size: int, batch_size: int, n_batches: int, seed: int = 1234):
    """The same validation windows at every evaluation: ``n_batches`` batches of evenly spaced
    windows over the split (all of it when it is small enough), independent of the training RNG."""
    import numpy as np
    arrays = [a for a in arrays if len(a) > block_size]
    if not arrays:
        raise ZooError(f"the validation split is shorter than the context (block_size + 1 = {block_size + 1} "
                       f"tokens). Use more data or a smaller block_size.")
    cand = [(i, s) for i, a in enumerate(arrays) for s in range(0, len(a) - block_size - 1 + 1, block_size)]
    need = n_batches * batch_size
    if len(cand) > need:
        pick = np.linspace(0, len(cand) - 1, need).round().astype(int)
        cand = [cand[j] for j in pick]
    sampler = WindowSampler(arrays, block_size, seed)
    batches = [cand[j:j + batch_size] for j in range(0, len(cand), batch_size)]
    return [sampler.gather(b) for b in batches if b]
