"""Token mixers that own their cache: rewinding caches (truncate, snapshot), cache sizes per token and
per sequence, and state carried across training windows (segment recurrence), with the toy EMA mixer
of tests/plugins/zoo-toys loaded in-process."""
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo import ZooError
from zoo.components import Dims, KVCache
from zoo.nn.cache import ModelCache, cache_bytes
from zoo.plugin.protocols import cache_size, rewind_of
from zoo.spec import catalog
from zoo.spec.catalog import load_registry

from conftest import needs_data

sys.path.insert(0, str(Path(__file__).parent / "plugins" / "zoo-toys" / "src"))
from zoo_toys import ema  # noqa: E402

# the hooks of the module, without its package's ZOO_API (the API version is raised elsewhere)
TOY = types.SimpleNamespace(register_attention=ema.register_attention, register_models=ema.register_models)


@pytest.fixture
def toy_registry(monkeypatch):
    """The loaded registry plus the toy mixer and its model gpt2-ema, as if zoo-toys were installed
    (also when a command reloads the registry)."""
    monkeypatch.setattr(catalog, "load_registry", lambda extra_plugins=(), use_entry_points=True: load_registry(
        [*extra_plugins, (TOY, "zoo-toys")], use_entry_points))
    zoo.configure([])
    yield zoo.get_registry()
    monkeypatch.undo()
    zoo.configure([])


def _all_ema(reg, posenc="none", n_layers=2, seed=0):
    """A tiny model whose every layer is the EMA mixer: its forward is a function of the state only."""
    spec = zoo.resolve("gpt2-ema", "tiny", n_layers=n_layers)
    spec["posenc"] = {"name": posenc, "params": {}}
    torch.manual_seed(seed)
    return zoo.build_from_spec(spec, reg).eval()


# ---- rewinding caches -------------------------------------------------------------------------

@pytest.mark.parametrize("name", zoo.list_models())
def test_truncate_then_decode_equals_never_having_decoded(name):
    """Every named model (tiny): prefill, decode 3 tokens that are then undone (truncated away, or
    a snapshot restored where a layer's cache is a state), decode the real continuation: the logits
    equal the full forward's."""
    model = zoo.build(name, "tiny").eval()
    torch.manual_seed(0)
    T, P = 12, 5
    idx = torch.randint(0, model.spec["vocab_size"], (2, T))
    other = torch.randint(0, model.spec["vocab_size"], (2, 3))
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_cache(2, T + 3, dtype=torch.float32)
        truncates = cache.rewind_modes() == ["truncate"] * model.spec["n_layers"]
        assert not cache.not_rewindable() and (truncates or cache.not_rewindable(["truncate"]))
        model(idx[:, :P], cache=cache)
        snap = None if truncates else cache.snapshot()
        for t in range(3):
            model(other[:, t:t + 1], cache=cache)
        cache.truncate(P) if truncates else cache.restore(snap)
        assert cache.length == P
        out = torch.cat([model(idx[:, t:t + 1], cache=cache)[0] for t in range(P, T)], 1)
    torch.testing.assert_close(out, full[:, P:], atol=1e-4, rtol=0)


def test_a_wrapped_ring_buffer_truncates_only_what_it_still_holds():
    """A sliding window of 4 slots that has wrapped: going back one position is exact, going back
    further would need positions it overwrote, and is refused with the figures."""
    spec = zoo.resolve("gpt2-rope-gqa", "tiny", **{"attention.params.window": 4})
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).eval()
    idx = torch.randint(0, spec["vocab_size"], (1, 12))
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_cache(1, 12)
        assert cache.layers[0].max_len == 4
        model(idx[:, :10], cache=cache)
        model(idx[:, :1], cache=cache)  # a token at position 10 that is then undone
        cache.truncate(10)
        out = torch.cat([model(idx[:, t:t + 1], cache=cache)[0] for t in (10, 11)], 1)
        torch.testing.assert_close(out, full[:, 10:], atol=1e-4, rtol=0)
        # now it holds 8..11: back to 10 would need position 7 for the window of position 10
        with pytest.raises(ZooError, match=r"ring buffer of 4 slots .* overwritten positions 7\.\.7.*Rewind at most 1 "):
            cache.truncate(10)
        assert cache.length == 12  # a refusal changes nothing


def test_truncate_refuses_bad_lengths():
    model = zoo.build("gpt2", "tiny").eval()
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    for n in (-1, 4):
        with pytest.raises(ZooError, match="give a length from 0 to 3"):
            cache.truncate(n)


class _OldCache:
    """A cache written for plugin API 1.0: no ``rewind``."""

    def reset(self):
        pass


def test_model_cache_refuses_by_name_what_cannot_rewind(toy_registry):
    cache = ModelCache([KVCache(1, 1, 4, 2), ema.EMAState(1, 4), _OldCache()],
                       ["layer 0 (mha)", "layer 1 (ema)", "layer 2 (old)"])
    assert cache.rewind_modes() == ["truncate", "snapshot", "none"]
    assert rewind_of(_OldCache()) == "none"
    assert cache.not_rewindable() == ["layer 2 (old) (rewind='none')"]
    assert cache.not_rewindable(("truncate",)) == ["layer 1 (ema) (rewind='snapshot')", "layer 2 (old) (rewind='none')"]
    with pytest.raises(ZooError, match=r"cannot truncate .*layer 1 \(ema\).*snapshot\(\)"):
        cache.truncate(0)
    with pytest.raises(ZooError, match=r"cannot take a snapshot.*layer 2 \(old\) \(rewind='none'\)"):
        cache.snapshot()
    # a model's cache names each layer's mixer
    model = _all_ema(toy_registry)
    assert model.new_cache(1, 4).not_rewindable(("truncate",)) == ["layer 0 (ema) (rewind='snapshot')",
                                                                   "layer 1 (ema) (rewind='snapshot')"]


def test_snapshot_restore_is_exact_for_a_state_cache(toy_registry):
    model = _all_ema(toy_registry, "learned")
    torch.manual_seed(1)
    idx = torch.randint(0, model.spec["vocab_size"], (2, 10))
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_cache(2, 10)
        model(idx[:, :4], cache=cache)
        snap = cache.snapshot()
        model(idx[:, 7:10], cache=cache)  # three other tokens
        cache.restore(snap)
        assert cache.length == 4
        out = torch.cat([model(idx[:, t:t + 1], cache=cache)[0] for t in range(4, 10)], 1)
    torch.testing.assert_close(out, full[:, 4:], atol=1e-5, rtol=0)


# ---- cache sizes ------------------------------------------------------------------------------

def test_cache_size_per_token_and_per_sequence(toy_registry):
    dims = Dims(d_model=64, n_heads=4)
    assert cache_size(ema.EMAMixer, dims, {}) == (0, 64)
    assert cache_size(toy_registry.get("attention", "gqa").cls, dims, {"n_kv_heads": 2}) == (2 * 2 * 16, 0)

    class Legacy:  # plugin API 1.0
        @classmethod
        def kv_cache_elems_per_token(cls, dims, params):
            return 7
    assert cache_size(Legacy, dims, {}) == (7, 0)
    assert cache_size(object, dims, {}) is None

    spec = zoo.resolve("gpt2-ema", "tiny")
    assert cache_bytes(spec, toy_registry, 2) == (0, spec["n_layers"] * spec["d_model"] * 2)
    mixed = zoo.resolve("gpt2-ema", "tiny", layers=[{"from": 1, "attention": {"name": "mha"}}])
    assert cache_bytes(mixed, toy_registry, 4) == (2 * 64 * 4, 64 * 4)
    # what a built model allocates is what it reports
    model = _all_ema(toy_registry)
    assert model.new_cache(3, 100, dtype=torch.float32).nbytes == 3 * cache_bytes(spec, toy_registry, 4)[1]


def test_zoo_show_and_generation_count_the_state(toy_registry, capsys):
    from zoo.cli import main
    from zoo.nn.memory import generation_bytes, model_cache_bytes
    assert main(["show", "gpt2-ema", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "0 bytes/token in bf16" in out and "plus a fixed 256 bytes per sequence in bf16, 512 in fp32" in out
    model = _all_ema(toy_registry)
    assert model_cache_bytes(model, 4) == (0, 512)
    need = generation_bytes(model.spec, 0, 3, 10, 10, 4, per_sequence=512)
    assert need["cache"] == 3 * 512 and need["cache_per_sequence"] == 512


# ---- the toy EMA mixer: its forms agree --------------------------------------------------------

def test_ema_parallel_form_equals_the_recurrence(toy_registry):
    m = ema.EMAMixer(Dims(d_model=8, n_heads=2), init_decay=0.7)
    with torch.no_grad():
        m.decay_logit.uniform_(-2, 2)
    u, h0 = torch.randn(2, 6, 8), torch.randn(2, 8)
    h, ref = m._scan(u, h0), []
    s = h0
    for t in range(6):
        s = m._step(u[:, t], s)
        ref.append(s)
    torch.testing.assert_close(h, torch.stack(ref, 1), atol=1e-5, rtol=1e-5)


def test_carried_state_continues_the_stream_exactly(toy_registry):
    """Two windows with the state carried equal one forward over both (no positions: the model is a
    function of the token stream), and the gradient stops at a detached state."""
    model = _all_ema(toy_registry)
    assert model.carried_layers() == [0, 1]
    idx = torch.randint(0, model.spec["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)[0]
    state = model.new_state()
    a = model(idx[:, :8], state=state)[0]
    assert all(s.shape == (2, 64) for s in state.layers)
    state.detach()
    b = model(idx[:, 8:], state=state)[0]
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=0)
    assert not any(s.requires_grad for s in model.new_state().layers if s is not None)
    b.sum().backward()  # through the second window only: the first's graph was cut
    with pytest.raises(ZooError, match="either a cache"):
        model(idx, cache=model.new_cache(2, 16), state=state)


def test_carried_state_roundtrips_through_a_state_dict(toy_registry):
    model = _all_ema(toy_registry)
    state = model.new_state()
    model(torch.zeros(1, 4, dtype=torch.long), state=state)
    other = model.new_state()
    other.load_state_dict(state.state_dict())
    for x, y in zip(state.layers, other.layers):
        assert torch.equal(x, y)
    with pytest.raises(ZooError, match="2 layers, the model 3"):
        zoo.nn.cache.CarriedState(3).load_state_dict(state.state_dict())


# ---- contiguous segments ----------------------------------------------------------------------

def test_segment_sampler_rows_continue_their_streams_and_resume():
    from zoo.data import SegmentSampler
    arrays = [np.arange(0, 300), np.arange(1000, 1200)]
    s = SegmentSampler(arrays, block_size=8, rows=4, seed=3)
    stream = np.concatenate(arrays)
    last = None
    for step in range(2 * s.per_epoch + 1):
        idx = s.next_indices(4)
        x, y = s.gather(idx)
        assert s.fresh == (step % s.per_epoch == 0)
        for r in range(4):  # the windows are the stream's tokens, targets shifted by one
            assert np.array_equal(x[r].numpy(), stream[idx[r]:idx[r] + 8])
            assert np.array_equal(y[r].numpy(), stream[idx[r] + 1:idx[r] + 9])
            assert r * s.part <= idx[r] and idx[r] + 9 <= (r + 1) * s.part  # rows read disjoint parts
        if last is not None and not s.fresh:
            assert [a + 8 for a in last] == idx  # row r starts where its last window ended
        last = idx
    # a window across the two arrays reads both
    assert s._read(298, 4).tolist() == [298, 299, 1000, 1001]
    # resume: a fresh sampler restored to the position gives the same windows
    st = s.state()
    nxt = [s.next_indices(4) for _ in range(3)]
    s2 = SegmentSampler(arrays, block_size=8, rows=4, seed=3)
    s2.load_state(st)
    assert [s2.next_indices(4) for _ in range(3)] == nxt
    with pytest.raises(ZooError, match="global batch"):
        s2.next_indices(8)
    with pytest.raises(ZooError, match="global batch"):
        SegmentSampler(arrays, block_size=8, rows=2).load_state(st)
    with pytest.raises(ZooError, match="too short for contiguous segments"):
        SegmentSampler([np.arange(50)], block_size=8, rows=8)


def test_segment_batches_continue_row_by_row():
    from zoo.data import segment_batches
    stream = np.arange(500)
    batches = segment_batches([stream], block_size=10, rows=3, steps=4)
    assert len(batches) == 4
    for k in range(1, 4):
        assert torch.equal(batches[k][0][:, 0], batches[k - 1][0][:, -1] + 1)
    again = segment_batches([stream], 10, 3, 4)  # the same batches at every evaluation
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


# ---- the trainer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from zoo.data import find_dataset, read_text
    p = tmp_path_factory.mktemp("corpus") / "shakespeare20k.txt"
    p.write_text(read_text(find_dataset("tinyshakespeare"))[:20_000], encoding="utf-8")
    return p


@needs_data()
def test_training_carries_state_and_resumes_exactly(toy_registry, tmp_path, corpus):
    """gpt2-ema trains on contiguous segments with its state carried; 8 steps straight and 4 + resume
    + 4 give the same losses, weights and validation loss (the state is in the checkpoint)."""
    from zoo.io.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint
    from zoo.train import TrainConfig, train, trainer_for
    # a constant learning rate: the run stopped at step 4 has the schedule of the run to step 8
    cfg = {"preset": "tiny", "max_iters": 8, "eval_interval": 4, "eval_iters": 2, "batch_size": 2, "grad_accum": 2,
           "warmup": 0, "lr": 1e-3, "min_lr": 1e-3, "sample_tokens": 0, "log_interval": 4, "data": str(corpus)}
    t = trainer_for("gpt2-ema", TrainConfig(**cfg, out=str(tmp_path / "probe"), run_id="p"))
    assert t.carried == [0, 1] and type(t.sampler).__name__ == "SegmentSampler"
    assert len(t.states) == 2 and t.val_batches[0][0].shape[0] == 2
    t.close()
    full = train("gpt2-ema", TrainConfig(**cfg, out=str(tmp_path / "a"), run_id="full"))
    half = train("gpt2-ema", TrainConfig(**dict(cfg, max_iters=4), out=str(tmp_path / "b"), run_id="r"))
    run = tmp_path / "b" / "gpt2-ema" / "r"
    ck = load_checkpoint(run)
    assert ck["sampler"]["mode"] == "segments" and ck["carried_state"]["layers"] == [0, 1]
    states = ck["carried_state"]["ranks"][0]  # one per micro-batch, (batch, d_model) per layer
    assert len(states) == 2 and states[0]["layers"][0].shape == (2, 64) and states[0]["layers"][0].abs().sum() > 0
    resumed = train(resume=str(run), cfg=TrainConfig(max_iters=8))
    losses = half["history"] + resumed["history"]
    assert [s for s, _ in losses] == list(range(1, 9))
    for (s1, l1), (s2, l2) in zip(full["history"], losses):
        assert abs(l1 - l2) <= 1e-6, (s1, l1, l2)
    assert abs(full["final_val_loss"] - resumed["final_val_loss"]) <= 1e-6
    # without the carried state the resumed run would differ: the state matters
    ck["carried_state"]["ranks"][0] = [{"layers": [None, None]}] * 2
    save_checkpoint(run / CKPT_NAME, ck)
    other = train(resume=str(run), cfg=TrainConfig(max_iters=8))
    assert abs(other["history"][0][1] - full["history"][4][1]) > 1e-6


# ---- the kit ----------------------------------------------------------------------------------

def test_the_kit_passes_the_toy_mixer(toy_registry):
    from zoo.testing import run_checks
    results = {name: (status, msg) for name, status, msg in run_checks(toy_registry.get("attention", "ema"))}
    assert {"check_kv_cache_matches_full", "check_cache_rewinds", "check_causality"} <= results.keys()
    assert all(status == "passed" for status, _ in results.values()), results


class _NoTruncate(KVCache):
    """Truncates by forgetting everything. (One that forgets nothing would pass, and rightly so: a
    position-masked cache never lets a query see the slots of later positions, which decoding
    overwrites before it reads them.)"""

    def truncate(self, n):
        self.reset()


class _SharedSnapshot(ema.EMAState):
    """A 'snapshot' that is the live state itself: later tokens change it."""

    def snapshot(self):
        return self.h


def test_the_kit_fails_caches_that_do_not_rewind_as_they_say(toy_registry):
    import dataclasses

    from zoo.testing import check_cache_rewinds
    gqa = toy_registry.get("attention", "mha")

    class Mha(gqa.cls):
        def new_cache(self, batch, max_len, device=None, dtype=None):
            return _NoTruncate(batch, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)

    class Ema(ema.EMAMixer):
        def new_cache(self, batch, max_len, device=None, dtype=None):
            return _SharedSnapshot(batch, self.in_proj.out_features, device=device, dtype=dtype)

    with pytest.raises(AssertionError, match="undone by truncate vs full forward"):
        check_cache_rewinds(dataclasses.replace(gqa, name="no-truncate", cls=Mha))
    with pytest.raises(AssertionError, match="undone by snapshot vs full forward"):
        check_cache_rewinds(dataclasses.replace(toy_registry.get("attention", "ema"), name="shared", cls=Ema))


def test_bench_cache_reports_both_sizes_and_the_state_decodes_as_recompute(toy_registry):
    """`zoo bench --cache` on the toy: bytes per token and per sequence, and greedy decoding with the
    state cache gives the tokens of recomputing the context."""
    from zoo.perf.bench import bench_cache
    res = bench_cache("gpt2-ema", "tiny", new_tokens=6, prompt_len=3, log=lambda *a: None)
    assert res["cache_bytes_per_token"] == 0 and res["cache_bytes_per_sequence"] == 2 * 64 * 4  # fp32
    assert res["same_tokens"]
