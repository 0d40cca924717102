"""Sampling training windows: :class:`WindowSampler` draws windows of ``block_size + 1`` tokens without
replacement within an epoch (a fresh permutation and a fresh start offset each epoch), gives each
distributed rank disjoint windows, and its position (epoch, cursor) is saved in checkpoints so a
resumed run sees the same batches as an uninterrupted one. :func:`fixed_batches` gives the same
validation windows at every evaluation.

:class:`SegmentSampler` offers contiguous segments instead, for mixers that carry state across
windows (segment recurrence): each row of the global batch reads its own stream, window after
window; :func:`segment_batches` is its validation counterpart."""
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


class SegmentSampler:
    """Contiguous segments: row r of every global batch continues row r's own stream, so a mixer's
    state carried from one step to the next (segment recurrence, Dai et al. 2019, Transformer-XL,
    arXiv:1901.02860) has seen exactly the tokens before the window.

    The arrays are laid end to end into one stream, cut into ``rows`` equal parts (one per row of the
    global batch, ``batch_size x grad_accum x processes``); row r's window k starts at
    ``part_start(r) + offset + k * block_size`` (its inputs begin where the last window's ended). An
    epoch is one pass over the parts, all rows in step; each epoch draws a fresh offset in
    [0, block_size) from (seed, epoch), and ``fresh`` says the windows just returned start new
    streams (the carried state must start empty). Rank r of w takes the same share of the rows as
    with :class:`WindowSampler`, so ranks read disjoint rows. ``state()``/``load_state()`` carry the
    position across a resume (with the same number of rows).
    """

    def __init__(self, arrays, block_size: int, rows: int, seed: int = 0):
        import numpy as np
        self.arrays = [a for a in arrays if len(a)]
        self.block_size, self.rows, self.seed = block_size, int(rows), seed
        self.bounds = np.cumsum([0] + [len(a) for a in self.arrays])  # (arrays + 1,) starts in the stream
        total = int(self.bounds[-1])
        self.part = total // self.rows
        slack = block_size if self.part >= 2 * block_size + 1 else 0  # room for the epoch's offset
        self.per_epoch = (self.part - slack - 1) // block_size  # windows per row per epoch
        if self.per_epoch < 1:
            raise ZooError(f"the data is too short for contiguous segments: {total} tokens split into {self.rows} "
                           f"streams (one per row of the global batch: batch_size x grad_accum x processes) leave "
                           f"{self.part} tokens each, but a window needs block_size + 1 = {block_size + 1}. Use "
                           f"more data, a smaller batch (--batch-size) or a smaller block_size (--set block_size=N).")
        self.slack = slack
        self.epoch, self.cursor, self.fresh = 0, 0, False

    def windows_per_epoch(self) -> int:
        return self.per_epoch * self.rows

    def _offset(self) -> int:
        import numpy as np
        return int(np.random.default_rng([self.seed, self.epoch]).integers(0, self.slack)) if self.slack else 0

    def next_indices(self, n: int):
        """The next window of every row: ``rows`` stream offsets (row r's at index r); ``fresh`` is
        True when they start the streams (the first step of an epoch)."""
        if n != self.rows:
            raise ZooError(f"contiguous segments were laid out for {self.rows} rows per step, but {n} were asked "
                           f"for; the global batch (batch_size x grad_accum x processes) must stay the same.")
        self.fresh = self.cursor == 0
        off = self._offset() + self.cursor * self.block_size
        out = [r * self.part + off for r in range(self.rows)]
        self.cursor += 1
        if self.cursor >= self.per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def gather(self, idx):
        """Stream offsets -> x, y int64 tensors of shape (len(idx), block_size)."""
        import numpy as np
        import torch
        win = np.stack([self._read(int(s), self.block_size + 1) for s in idx])
        t = torch.from_numpy(win)  # (B, T+1)
        return t[:, :-1], t[:, 1:]  # (B, T), (B, T)

    def _read(self, start: int, n: int):
        """Tokens [start, start + n) of the arrays laid end to end."""
        import numpy as np
        out, i = [], int(np.searchsorted(self.bounds, start, side="right")) - 1
        while n > 0:
            lo = start - int(self.bounds[i])
            piece = np.asarray(self.arrays[i][lo:lo + n], dtype=np.int64)
            out.append(piece)
            n, start, i = n - len(piece), start + len(piece), i + 1
        return np.concatenate(out)

    def state(self) -> dict:
        return {"mode": "segments", "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "rows": self.rows}

    def load_state(self, st: dict):
        if st.get("mode") != "segments" or int(st.get("rows", -1)) != self.rows:
            raise ZooError(f"the checkpoint's data position is not one of contiguous segments over {self.rows} rows "
                           f"(it has {st.get('rows', 'independent windows')}); resume with the global batch "
                           f"(batch_size x grad_accum x processes) the run was trained with.")
        self.epoch, self.cursor, self.seed = int(st["epoch"]), int(st["cursor"]), int(st["seed"])


def segment_batches(arrays, block_size: int, rows: int, steps: int):
    """Validation as contiguous segments: ``steps`` batches of ``rows`` windows where row r of batch k
    continues row r of batch k - 1 (the same batches at every evaluation). With fewer tokens than
    that, fewer steps."""
    arrays = [a for a in arrays if len(a)]
    total = sum(len(a) for a in arrays)
    steps = max(1, min(steps, (total // rows - 1) // block_size))
    if total // rows < block_size + 1:
        raise ZooError(f"the validation split ({total} tokens) is too short for {rows} contiguous streams of "
                       f"block_size + 1 = {block_size + 1} tokens. Use more data, a smaller batch or block_size.")
    s = SegmentSampler(arrays, block_size, rows)
    s.slack, s.per_epoch = 0, steps  # evenly from the start of each part, no random offset
    return [s.gather(s.next_indices(rows)) for _ in range(steps)]
