"""Nothing a user owns is lost: --force replaces only what a zoo command wrote, no output may be or
hold an input, no file the zoo did not write is overwritten without --force; a run's data, its
resume and its lock; a corpus the sample prompt cannot be encoded in.

Each case is an invocation of the CLI (in-process), the exit code, a fragment of the message, no
traceback, and the files that must be unchanged."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.io.checkpoint import load_checkpoint
from zoo.io.rundir import RunLock

from conftest import needs_data

FIXTURES = Path(__file__).parent / "fixtures" / "runs-aaa45bd"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def digest(root: Path) -> dict:
    """Every file under root with its sha256: what must not change."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def runs(tmp_path):
    """A runs folder holding two runs of aaa45bd (copies of the fixtures)."""
    r = tmp_path / "runs"
    shutil.copytree(FIXTURES / "gpt2" / "plain", r / "gpt2" / "plain")
    shutil.copytree(FIXTURES / "hf-llama", r / "hf-llama")
    return r


def test_force_never_deletes_a_folder_the_zoo_did_not_write(runs, tmp_path, capsys):
    base = runs / "gpt2" / "plain"
    work = tmp_path / "work"
    assert run(capsys, "export", "hf", base, work / "src")[0] == 0  # a Hugging Face model folder to import
    before = {**digest(runs), **digest(work)}
    cases = [  # (argv, fragment of the message)
        (["export", "hf", base, runs, "--force"], "contains the input"),          # the whole runs folder
        (["export", "hf", base, base, "--force"], "is the input"),                # the run itself
        (["export", "hf", base, base / "sub", "--force"], "is inside the input"),
        (["lora", "merge", base, "--adapter", FIXTURES / "gpt2-lora" / "lora" / "adapter.safetensors",
          "--out", runs, "--force"], "contains the input"),
        (["import", "hf", work / "src", "--out", work, "--force"], "contains the input"),
        (["import", "hf", work / "src", "--out", work / "src", "--force"], "is the input"),
        (["export", "hf", base, runs / "hf-llama", "--force"], "zoo did not write"),  # an old run: no marker
    ]
    for argv, fragment in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and fragment in err, (argv, err)
    assert {**digest(runs), **digest(work)} == before


def test_force_replaces_only_its_own_output_and_lists_what_it_refuses(runs, tmp_path, capsys):
    base, out = runs / "gpt2" / "plain", tmp_path / "out"
    assert run(capsys, "export", "hf", base, out)[0] == 0
    assert json.loads((out / ".zoo-output.json").read_text())["command"] == "zoo export hf"
    code, _, err = run(capsys, "export", "hf", base, out)
    assert code == 2 and "--force" in err  # the zoo wrote it: --force replaces it
    assert run(capsys, "export", "hf", base, out, "--force")[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = digest(mine)
    code, _, err = run(capsys, "export", "hf", base, mine, "--force")
    assert code == 2 and "notes.txt" in err and "never replaced" in err
    assert digest(mine) == before
    code, _, err = run(capsys, "export", "hf", base, mine / "notes.txt", "--force")
    assert code == 2 and "is a file" in err
    assert digest(mine) == before


@needs_data()
def test_tokenizer_train_never_overwrites_the_corpus_or_a_file_it_did_not_write(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    other = tmp_path / "other.json"
    other.write_text('{"mine": true}')
    before = {**digest(corpus), **digest(other)}
    code, _, err = run(capsys, "tokenizer", "train", "--data", corpus, "--out", corpus, "--vocab-size", "260")
    assert code == 2 and "is the input" in err
    code, _, err = run(capsys, "tokenizer", "train", "--data", corpus, "--out", corpus, "--vocab-size", "260", "--force")
    assert code == 2 and "is the input" in err
    code, _, err = run(capsys, "tokenizer", "train", "--data", corpus, "--out", other, "--vocab-size", "260")
    assert code == 2 and "--force" in err
    assert {**digest(corpus), **digest(other)} == before
    tok = tmp_path / "tok.json"
    assert run(capsys, "tokenizer", "train", "--data", corpus, "--out", tok, "--vocab-size", "260")[0] == 0
    assert run(capsys, "tokenizer", "train", "--data", corpus, "--out", tok, "--vocab-size", "270")[0] == 0  # its own
    assert run(capsys, "tokenizer", "train", "--data", corpus, "--out", other, "--vocab-size", "260", "--force")[0] == 0


def test_output_files_are_checked_before_the_work(tmp_path, capsys):
    code, _, err = run(capsys, "bench", "gpt2", "--preset", "tiny", "--json", tmp_path / "nodir" / "x.json")
    assert code == 2 and "does not exist" in err
    mine = tmp_path / "results.json"
    mine.write_text("[1, 2, 3]")
    code, _, err = run(capsys, "bench", "gpt2", "--preset", "tiny", "--json", mine)
    assert code == 2 and "--force" in err and mine.read_text() == "[1, 2, 3]"
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not a zoo plot")
    code, _, err = run(capsys, "compare", FIXTURES / "gpt2" / "plain", "--plot", photo)
    assert code == 2 and "--force" in err and photo.read_bytes().endswith(b"not a zoo plot")


@needs_data()
@pytest.mark.parametrize("text", ["abcdefghij" * 400, "春眠不覚暁処処聞啼鳥夜来風雨声花落知多少" * 100])
def test_a_corpus_without_a_newline_trains_and_samples(text, tmp_path, capsys):
    """The sample prompt "\\n" is not in such a corpus's vocabulary: samples start from another prompt."""
    data = tmp_path / "c.txt"
    data.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "train", "gpt2", "--preset", "tiny", "--data", data, "--max-iters", "2",
                       "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2", "--sample-tokens", "5",
                       "--out", tmp_path / "runs", "--run-id", "r")
    assert code == 0, err
    assert "is not in the tokenizer's vocabulary" in err
    assert load_checkpoint(tmp_path / "runs" / "gpt2" / "r")["step"] == 2


def test_an_unseen_character_error_is_one_short_paragraph():
    from zoo.errors import ZooError
    from zoo.tokenizers import CharTokenizer
    tok = CharTokenizer("".join(chr(0x4e00 + i) for i in range(16012)))
    with pytest.raises(ZooError) as e:
        tok.encode("a")
    assert len(str(e.value)) < 400 and "16012 characters" in str(e.value)


# ---- resume -----------------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path, capsys):
    """A run of 4 steps on a small corpus, trained from another working directory."""
    if not (Path(__import__("os").environ.get("ZOO_DATA_DIR", "/nonexistent")) / "tinyshakespeare.txt").is_file():
        pytest.skip("Tiny Shakespeare not available: set ZOO_DATA_DIR to a folder holding tinyshakespeare.txt")
    from zoo.data import find_dataset, read_text
    data = tmp_path / "data" / "corpus.txt"
    data.parent.mkdir()
    data.write_text(read_text(find_dataset("tinyshakespeare"))[:20_000], encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    import os
    old = os.getcwd()
    os.chdir(tmp_path)
    try:  # the data path as typed, relative to this directory
        code, _, err = run(capsys, "train", "gpt2", "--preset", "tiny", "--data", "data/corpus.txt", "--max-iters", "4",
                           "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "2", "--sample-tokens", "0",
                           "--out", "runs", "--run-id", "r")
    finally:
        os.chdir(old)
    assert code == 0, err
    return tmp_path / "runs" / "gpt2" / "r", data


def test_resume_from_another_directory_and_relocated_data(trained, tmp_path, capsys, monkeypatch):
    run_dir, data = trained
    ckpt = load_checkpoint(run_dir)
    assert Path(ckpt["train"]["data"]).is_absolute() and ckpt["data"]["sha256"]
    monkeypatch.chdir(tmp_path / "work")
    assert run(capsys, "train", "--resume", run_dir, "--max-iters", "6")[0] == 0
    moved = tmp_path / "moved.txt"
    shutil.move(data, moved)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--max-iters", "8")
    assert code == 2 and "--data" in err
    assert run(capsys, "train", "--resume", run_dir, "--max-iters", "8", "--data", moved)[0] == 0
    assert load_checkpoint(run_dir)["step"] == 8
    other = tmp_path / "other.txt"
    other.write_text(moved.read_text()[:-10] + "0123456789")
    before = digest(run_dir / "ckpt.pt")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--max-iters", "10", "--data", other)
    assert code == 2 and "not the data this run trained on" in err
    assert digest(run_dir / "ckpt.pt") == before


def test_resume_refuses_what_would_make_it_another_run(trained, capsys):
    run_dir, _ = trained
    before = digest(run_dir / "ckpt.pt")
    for argv, flag in ((["--lr", "0.5"], "--lr"), (["--set", "n_layers=3"], "--set"), (["--preset", "baby"], "--preset"),
                       (["--batch-size", "7"], "--batch-size"), (["--seed", "5"], "--seed")):
        code, _, err = run(capsys, "train", "--resume", run_dir, *argv)
        assert code == 2 and flag in err and "cannot change on --resume" in err, argv
    assert digest(run_dir / "ckpt.pt") == before
    code, _, err = run(capsys, "train", "--resume", run_dir, "--max-iters", "6", "--eval-interval", "3",
                       "--eval-iters", "2", "--log-interval", "1", "--early-stop", "5", "--sample-tokens", "0")
    assert code == 0, err


def test_two_resumes_of_one_run_cannot_run_at_once(trained, capsys):
    import os
    run_dir, _ = trained
    lock = RunLock(run_dir).acquire()  # as a training process holds it
    try:
        code, _, err = run(capsys, "train", "--resume", run_dir, "--max-iters", "6")
        assert code == 2 and f"process {os.getpid()}" in err
    finally:
        lock.release()
    assert run(capsys, "train", "--resume", run_dir, "--max-iters", "6")[0] == 0


def test_a_killed_write_leaves_temp_files_that_resume_removes(trained, capsys):
    run_dir, _ = trained
    stale = [run_dir / ".ckpt.pt-abc123.tmp", run_dir / ".ckpt-old.tmp"]  # this release's and aaa45bd's names
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    assert run(capsys, "train", "--resume", run_dir, "--max-iters", "6")[0] == 0
    assert not any(p.exists() for p in stale)
