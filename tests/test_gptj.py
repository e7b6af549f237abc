"""GPT-J: model size, the C4 reader, tokenizer loading, packing and sharding, and the runs."""

import gzip
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.core.config import load_config
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.gptj.data import (
    EOS_TOKEN,
    EVAL_PATTERN,
    IGNORE_TARGET,
    TRAIN_PATTERN,
    C4EvalSet,
    C4TrainStream,
    list_c4_files,
    load_tokenizer,
    pack,
    read_documents,
    slot_documents,
    synthesize,
)
from benchmarks.gptj.model import (
    GPTJLM,
    GPTJModelConfig,
    LogPerplexity,
    causal_lm_loss,
    model_vocab_size,
)
from benchmarks.gptj.train import SPEC, build_model
from tests.conftest import run_mlbench

GPTJ_6B_PARAMETERS = 6_050_882_784
NON_ASCII = "Naïve Zoë ищет the 🌍 globe in 東京 — ¿por qué?"


def write_c4(path: Path, texts: list[str], compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z",
                                "url": f"https://example.org/{i}"}, ensure_ascii=False) + "\n"
                    for i, text in enumerate(texts))
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as out:
            out.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def c4_synth(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("c4-data")
    synthesize(outdir, samples=SPEC.default_samples, seed=0)
    return outdir


@pytest.fixture(scope="module")
def tokenizer(c4_synth):
    return load_tokenizer(c4_synth / "tokenizer")


def test_parameter_count_is_gptj_6b_on_meta():
    with torch.device("meta"):
        model = build_model(load_config(SPEC.config_path(None), SPEC.schema))
    assert sum(p.numel() for p in model.parameters()) == GPTJ_6B_PARAMETERS
    assert model.lm.config.vocab_size == 50400


def test_vocabulary_follows_the_tokenizer():
    assert model_vocab_size(GPTJModelConfig(), 50257) == 50400
    assert model_vocab_size(GPTJModelConfig(), 526) == 600
    assert model_vocab_size(GPTJModelConfig(vocab_size=50400), 50257) == 50400
    with pytest.raises(ConfigError, match="model.vocab_size"):
        model_vocab_size(GPTJModelConfig(vocab_size=1000), 50257)


def test_synthetic_c4_uses_the_released_names_and_fields(c4_synth):
    train = list_c4_files(c4_synth, TRAIN_PATTERN)
    assert [p.name for p in train] == [f"c4-train.{i:05d}-of-01024.json.gz" for i in range(4)]
    [validation] = list_c4_files(c4_synth, EVAL_PATTERN)
    assert validation.name == "c4-validation.00000-of-00008.json.gz"
    with gzip.open(train[0], "rt", encoding="utf-8") as lines:
        record = json.loads(next(lines))
    assert set(record) == {"text", "timestamp", "url"}
    texts = list(read_documents(train[0]))
    assert len(texts) == SPEC.default_samples // 4
    assert any(not text.isascii() for text in texts)
    assert {p.name for p in (c4_synth / "tokenizer").iterdir()} >= {
        "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"}


def test_shard_range_selects_files(tmp_path):
    for number in (766, 767, 768, 1023):
        write_c4(tmp_path / "en" / f"c4-train.{number:05d}-of-01024.json.gz", ["x"])
    chosen = list_c4_files(tmp_path, TRAIN_PATTERN, [768, 1023])
    assert [p.name[9:14] for p in chosen] == ["00768", "01023"]
    with pytest.raises(InputError, match="numbered 0-5"):
        list_c4_files(tmp_path, TRAIN_PATTERN, [0, 5])


def test_tokenizer_json_and_vocab_merges_load_the_same(c4_synth, tmp_path, tokenizer):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(c4_synth / "tokenizer" / name, tmp_path)
    from_pair = load_tokenizer(tmp_path)
    ids = tokenizer.encode(NON_ASCII).ids
    assert ids == from_pair.encode(NON_ASCII).ids
    assert tokenizer.decode(ids) == NON_ASCII
    assert from_pair.get_vocab_size() == tokenizer.get_vocab_size() > 256
    assert from_pair.token_to_id(EOS_TOKEN) == tokenizer.token_to_id(EOS_TOKEN)


def test_tokenizer_folder_problems_name_the_place(tmp_path, c4_synth):
    with pytest.raises(InputError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(InputError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    no_eos = tmp_path / "no_eos"
    no_eos.mkdir()
    vocab = json.loads((c4_synth / "tokenizer" / "vocab.json").read_text())
    del vocab[EOS_TOKEN]
    (no_eos / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (no_eos / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(InputError, match=f"vocab.json.*{EOS_TOKEN}"):
        load_tokenizer(no_eos)


def test_reader_handles_plain_json_and_names_bad_lines(tmp_path):
    plain = write_c4(tmp_path / "plain.json", [NON_ASCII, "second"], compress=False)
    assert list(read_documents(plain)) == [NON_ASCII, "second"]
    broken = write_c4(tmp_path / "broken.json.gz", ["fine"])
    with gzip.open(broken, "at", encoding="utf-8") as out:
        out.write('{"text": "cut off\n')
    with pytest.raises(InputError, match=r"broken.json.gz:2"):
        list(read_documents(broken))
    not_gzip = tmp_path / "fake.json.gz"
    not_gzip.write_text('{"text": "not compressed"}\n')
    with pytest.raises(InputError, match="fake.json.gz"):
        list(read_documents(not_gzip))
    no_text = write_c4(tmp_path / "no_text.json.gz", [])
    with gzip.open(no_text, "wt") as out:
        out.write('{"url": "x"}\n')
    with pytest.raises(InputError, match="no_text.json.gz:1.*'text'"):
        list(read_documents(no_text))


def test_packing_makes_every_token_a_target_once():
    documents = [list(range(start, start + length))
                 for start, length in ((0, 5), (100, 9), (200, 3), (300, 14))]
    windows = list(pack(documents, seq_len=8))
    stream = np.concatenate(documents)
    assert all(len(w) == 9 for w in windows) and len(windows) == (len(stream) - 1) // 8
    for k, window in enumerate(windows):
        assert (window == stream[k * 8: k * 8 + 9]).all()


@pytest.mark.parametrize("files, slots", [(6, 4), (2, 4)])
def test_slots_share_a_pass_without_duplicates(tmp_path, files, slots):
    paths = [write_c4(tmp_path / f"f{i}.json.gz", [f"doc {i}-{j}" for j in range(5)])
             for i in range(files)]
    per_slot = [list(itertools.islice(slot_documents(paths, slot, slots, seed=7), 200))
                for slot in range(slots)]
    first_pass = []
    for slot, documents in enumerate(per_slot):
        if files >= slots:
            count = 5 * len(range(slot, files, slots))
        else:
            count = len(range(slot, 5 * files, slots))
        first_pass += documents[:count]
    assert sorted(first_pass) == sorted(f"doc {i}-{j}" for i in range(files) for j in range(5))


def test_train_stream_workers_read_different_documents(c4_synth, tokenizer):
    files = list_c4_files(c4_synth, TRAIN_PATTERN)
    loader = DataLoader(C4TrainStream(files, tokenizer, 32, rank=0, world_size=1, seed=0),
                        batch_size=2, num_workers=2)
    (x0, y0), (x1, y1) = itertools.islice(loader, 2)
    assert x0.shape == (2, 32) and x0.dtype == torch.int64
    assert torch.equal(x0[:, 1:], y0[:, :-1]) and not torch.equal(x0, x1)


def test_eval_subset_split_over_ranks_and_padded(c4_synth, tokenizer):
    files = list_c4_files(c4_synth, EVAL_PATTERN)
    whole = C4EvalSet(files, tokenizer, 16, sequences=10, rank=0, world_size=1)
    reference = [tuple(x.tolist()) for x, _ in whole]
    assert len(reference) == whole.num_sequences == 10
    shares = [C4EvalSet(files, tokenizer, 16, 10, rank, 4) for rank in range(4)]
    assert {len(share) for share in shares} == {3}
    real = [tuple(x.tolist()) for share in shares for x, y in share if (y != IGNORE_TARGET).all()]
    padding = [y for share in shares for _, y in share if (y == IGNORE_TARGET).all()]
    assert sorted(real) == sorted(reference) and len(padding) == 2
    with pytest.raises(InputError, match="less than one sequence"):
        C4EvalSet(files, tokenizer, 100_000, 1, 0, 1)


def test_log_perplexity_of_uniform_logits_is_log_vocab():
    metric = LogPerplexity()
    targets = torch.tensor([[1, 2, IGNORE_TARGET], [3, IGNORE_TARGET, IGNORE_TARGET]])
    metric.update(torch.zeros(2, 3, 50), targets)
    assert metric.compute(torch.device("cpu")) == pytest.approx(math.log(50))
    assert not metric.higher_is_better and metric.mllog_key == "eval_accuracy"


def test_tiny_model_runs_with_the_synthetic_tokenizer(tokenizer):
    config = GPTJModelConfig(n_embd=32, n_layer=1, n_head=2, rotary_dim=8, n_positions=16,
                             activation_checkpointing=True)
    model = GPTJLM(config, tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS_TOKEN))
    tokens = torch.randint(0, tokenizer.get_vocab_size(), (2, 17))
    logits = model(tokens[:, :-1])
    assert logits.shape == (2, 16, model_vocab_size(config, tokenizer.get_vocab_size()))
    causal_lm_loss(logits, tokens[:, 1:]).backward()
    assert model.lm.transformer.wte.weight.grad is not None


def test_missing_tokenizer_exits_2_naming_it(c4_synth, tmp_path):
    shutil.copytree(c4_synth / "en", tmp_path / "en")
    done = run_mlbench("train", "gptj", "--config", "smoke", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(tmp_path / "tokenizer") in errors[0], done.stderr
    assert not done.events("run_start")


def report(done, label: str) -> None:
    print(f"gptj smoke, {label}: {done.time_to_target():.1f} s to target, "
          f"{done.events('mlbench_throughput')[-1]['value']:.1f} sequences/s")


@pytest.mark.slow
def test_smoke_run_reaches_target(c4_synth):
    done = run_mlbench("train", "gptj", "--config", "smoke", "--data-dir", str(c4_synth))
    assert done.returncode == 0, done.stderr
    assert done.events("run_stop")[0]["metadata"]["status"] == "success"
    values = [e["value"] for e in done.events("eval_accuracy")]
    assert values[-1] <= 0.40 < values[0]
    assert done.events("opt_adam_beta_2")[0]["value"] == 0.95
    report(done, "1 process")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes(c4_synth, strategy):
    done = run_mlbench("train", "gptj", "--config", "smoke", "--data-dir", str(c4_synth),
                       "--set", f"distributed.strategy={strategy}",
                       "--set", f"model.activation_checkpointing={strategy == 'fsdp'}",
                       launcher=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert done.returncode == 0, done.stderr
    assert "rank=1/2" in done.stderr and "backend=gloo" in done.stderr
    assert done.events("run_stop")[0]["metadata"]["status"] == "success"
    report(done, f"2 processes, {strategy}")


@pytest.mark.slow
def test_broken_training_line_exits_2_naming_the_file(c4_synth, tmp_path):
    shutil.copytree(c4_synth, tmp_path / "c4")
    victim = sorted((tmp_path / "c4" / "en").glob("c4-train.*"))[0]
    with gzip.open(victim, "wt", encoding="utf-8") as out:
        out.write('{"text": "fine"}\n{"text": broken\n')
    done = run_mlbench("train", "gptj", "--config", "smoke", "--data-dir", str(tmp_path / "c4"),
                       "--set", "data.train_subset=1")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{victim.name}:2" in errors[0], done.stderr
