"""Data: dataset lookup, nanoGPT's split, the window sampler, token shards, and the trained BPE."""
import json

import numpy as np
import pytest

import zoo
from zoo import data as D
from zoo.data import corpus
from zoo.tokenizers.bpe import BPETokenizer, train_bpe
from zoo.cli import main
from zoo.tokenizers import CharTokenizer, get_tokenizer, load_config

from conftest import needs_data


def test_split_is_nanogpt_first_90_percent():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    tr, va = D.split_text(text)
    assert tr == text[:900] and va == text[900:]


@needs_data()
def test_find_dataset_uses_zoo_data_dir_and_data_flag(tmp_path, monkeypatch):
    p = D.find_dataset("tinyshakespeare")
    assert p.name == "tinyshakespeare.txt" and p.stat().st_size == corpus.TINYSHAKESPEARE["size"]
    assert corpus._sha256(p) == corpus.TINYSHAKESPEARE["sha256"]
    assert D.find_dataset("tinyshakespeare", str(p.parent)) == p  # a directory holding the file
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(zoo.ZooError, match="does not hold tinyshakespeare.txt"):
        D.find_dataset("tinyshakespeare")


def test_offline_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # a package without the embedded copy: the download is tried, and fails here
    bad = dict(corpus.TINYSHAKESPEARE, url="http://127.0.0.1:9/tinyshakespeare.txt", embedded=None)  # nothing listens
    monkeypatch.setitem(D.DATASETS, "tinyshakespeare", bad)
    with pytest.raises(zoo.ZooError) as e:
        D.find_dataset("tinyshakespeare")
    assert str(tmp_path / "zoo" / "tinyshakespeare.txt") in str(e.value) and "ZOO_DATA_DIR" in str(e.value)
    assert not any((tmp_path / "zoo").glob("*"))  # no partial file left


def test_the_package_ships_tiny_shakespeare_for_machines_without_network(tmp_path, monkeypatch):
    """Without ZOO_DATA_DIR and with an empty cache the built-in corpus comes from the package (the
    network is never asked), is the canonical file (md5 6fb458f1...), and is unpacked once."""
    import hashlib
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(corpus, "_download", lambda *a: pytest.fail("the embedded copy must be used, not the network"))
    p = D.find_dataset("tinyshakespeare")
    assert p == tmp_path / "zoo" / "tinyshakespeare.txt"
    assert hashlib.md5(p.read_bytes()).hexdigest() == "6fb458f1232090904fb40fe944165e91"
    mtime = p.stat().st_mtime_ns
    assert D.find_dataset("tinyshakespeare") == p and p.stat().st_mtime_ns == mtime


def test_sampler_is_without_replacement_within_an_epoch_and_resumable():
    arr = np.arange(1000, dtype=np.uint16)
    s = D.WindowSampler([arr], block_size=10, seed=3)
    n = s.windows_per_epoch()
    first = s.next_indices(n)
    assert len(set(first)) == n  # every window once
    starts = sorted(st for _, st in first)
    assert all(b - a == 10 for a, b in zip(starts, starts[1:]))  # non-overlapping
    second = s.next_indices(5)
    assert s.epoch == 1
    # a fresh sampler restored to the same position gives the same windows
    s2 = D.WindowSampler([arr], block_size=10, seed=3)
    s2.load_state({"epoch": 1, "cursor": 0, "seed": 3})
    assert s2.next_indices(5) == second
    x, y = s.gather(second[:2])
    assert x.shape == (2, 10) and (y[:, :-1] == x[:, 1:]).all()


def test_ranks_take_disjoint_shares_of_the_same_global_batch():
    arr = np.arange(5000, dtype=np.uint16)
    B, world = 4, 2
    glob = D.WindowSampler([arr], 16, seed=0).next_indices(B * world)
    shares = [glob[r * B:(r + 1) * B] for r in range(world)]  # what the trainer gives rank r
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(glob)


def test_corpus_shorter_than_context_is_a_clear_error():
    with pytest.raises(zoo.ZooError, match="shorter than the context"):
        D.WindowSampler([np.arange(10, dtype=np.uint16)], block_size=32)


@needs_data()
def test_prepare_shards_and_read_them_memory_mapped(tmp_path, capsys):
    text = D.read_text(D.find_dataset("tinyshakespeare"))[:50_000]
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    out = tmp_path / "shards"
    assert main(["data", "prepare", str(f), "--out", str(out), "--tokenizer", "gpt2", "--shard-tokens", "4000",
                 "--max-tokens", "10000"]) == 0
    meta = D.load_meta(out)
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == {"type": "tiktoken", "encoding": "gpt2"}
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == 10000
    train = D.open_shards(out, "train")
    assert all(isinstance(a, np.memmap) for a in train) and max(len(a) for a in train) <= 4000
    tok = get_tokenizer("gpt2")
    tr, va = D.split_text(text)
    val_ids = tok.encode(va)
    assert np.concatenate(D.open_shards(out, "val")).tolist() == val_ids[:meta["tokens"]["val"]]
    assert np.concatenate(train).tolist() == tok.encode(tr)[:meta["tokens"]["train"]]
    # refuses to overwrite
    assert main(["data", "prepare", str(f), "--out", str(out)]) == 2
    assert "already holds shards" in capsys.readouterr().err


def test_documents_go_to_val_first_separated_by_eot(tmp_path):
    tok = get_tokenizer("gpt2")
    docs = ["hello world", "second doc", "third one here"]
    meta = D.prepare_shards(tmp_path / "s", tok, documents=iter(docs), val_tokens=3)
    val = np.concatenate(D.open_shards(tmp_path / "s", "val")).tolist()
    assert val == [tok.eot] + tok.encode("hello world")
    train = np.concatenate(D.open_shards(tmp_path / "s", "train")).tolist()
    assert train == [tok.eot] + tok.encode("second doc") + [tok.eot] + tok.encode("third one here")
    assert meta["tokens"] == {"train": len(train), "val": len(val)}


def test_hf_streaming_without_datasets_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert main(["data", "prepare", "--hf", "HuggingFaceFW/fineweb-edu", "--out", str(tmp_path / "x")]) == 2
    assert "pip install datasets" in capsys.readouterr().err


def _apply_merges(text, merges):
    """Reference BPE encoding: apply the learned merges in order to each pre-token's bytes."""
    import regex
    from zoo.tokenizers.bpe import GPT2_PATTERN
    rank = {m: i for i, m in enumerate(merges)}
    out = []
    for chunk in regex.findall(GPT2_PATTERN, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while True:
            best = min(((rank.get(a + b, 1e18), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))), default=None)
            if best is None or best[0] == 1e18:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [256 + rank[p] if len(p) > 1 else p[0] for p in parts]
    return out


@needs_data()
def test_trained_bpe_encodes_through_tiktoken_as_its_merges_say(tmp_path, capsys):
    text = D.read_text(D.find_dataset("tinyshakespeare"))[:200_000]
    merges = train_bpe(text, 400)
    assert len(merges) == 400 - 257 and len(set(merges)) == len(merges)
    tok = BPETokenizer(merges)
    sample = text[100_000:103_000]
    assert tok.encode(sample) == _apply_merges(sample, merges)
    assert tok.decode(tok.encode("Zoë's naïve café — ünïcödé!")) == "Zoë's naïve café — ünïcödé!"
    assert len(tok.encode(sample)) < len(sample.encode()) * 0.75  # it compresses
    # the CLI saves it; it loads back as the same encoder
    out = tmp_path / "tok.json"
    f = tmp_path / "c.txt"
    f.write_text(text)
    assert main(["tokenizer", "train", "--data", str(f), "--vocab-size", "400", "--out", str(out)]) == 0
    loaded = load_config(out)
    assert loaded.encode(sample) == tok.encode(sample) and loaded.vocab_size == 400
    assert json.loads(out.read_text())["type"] == "bpe"


def test_char_tokenizer_round_trip():
    t = CharTokenizer.from_text("hello world")
    assert t.decode(t.encode("low hell")) == "low hell" and t.vocab_size == len(set("hello world"))


def test_hf_dataset_is_streamed_document_by_document(tmp_path, monkeypatch):
    """`zoo data prepare --hf` with a stand-in for the `datasets` package (no network here): it asks for
    a streaming split and stops reading once the token limit is reached."""
    import sys
    import types
    asked, served = {}, []

    def load_dataset(name, config, split, streaming):
        asked.update(name=name, config=config, split=split, streaming=streaming)

        def rows():
            for i in range(10_000):
                served.append(i)
                yield {"text": f"document number {i} about owls.", "id": i}
        return rows()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    out = tmp_path / "fw"
    assert main(["data", "prepare", "--hf", "HuggingFaceFW/fineweb-edu", "--hf-config", "sample-10BT",
                 "--out", str(out), "--max-tokens", "500", "--val-tokens", "100"]) == 0
    assert asked == {"name": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "split": "train", "streaming": True}
    meta = D.load_meta(out)
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == 500 and meta["tokens"]["val"] >= 100
    assert len(served) < 100  # streamed: stopped long before the end of the dataset
    tok = get_tokenizer("gpt2")
    val = np.concatenate(D.open_shards(out, "val")).tolist()
    assert val[:1 + len(tok.encode("document number 0 about owls."))] == [tok.eot] + tok.encode("document number 0 about owls.")
