"""C4 as released (gzipped JSON lines), tokenized and packed; and a writer of a synthetic C4.

On disk (``allenai/c4`` ``en``): ``en/c4-train.NNNNN-of-01024.json.gz`` and
``en/c4-validation.NNNNN-of-00008.json.gz``, one JSON object per line with ``text``,
``timestamp`` and ``url``. The tokenizer is a local folder in the Hugging Face layout:
``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``. It is loaded with the
``tokenizers`` library directly (transformers 5 silently ignores the old ``vocab_file=`` /
``merges_file=`` keywords and would hand back an empty vocabulary).

Documents are tokenized, each followed by EOS (``<|endoftext|>``, 50256 for GPT-2), and
concatenated; windows of ``seq_len + 1`` tokens with stride ``seq_len`` give the inputs
(``window[:-1]``) and the next-token targets (``window[1:]``), so every token is a target
exactly once and no padding is needed.

Training is an endless stream per (rank, DataLoader worker) slot. On every pass the files are
put in a new order and dealt to the slots (``order[slot::slots]``), so no document is read
twice within a pass; with fewer files than slots, every slot reads all files and keeps every
``slots``-th document instead. Evaluation uses a fixed subset: the first ``sequences`` packed
windows of the validation files (in name order), dealt over the ranks and padded with
target-less windows so that every rank runs the same number of batches (needed under FSDP).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from benchmarks.core.config import DataConfig, NonNegativeInt, PositiveInt
from benchmarks.core.data import worker_shard
from benchmarks.core.errors import InputError

EOS_TOKEN = "<|endoftext|>"
IGNORE_TARGET = -100
TRAIN_PATTERN = "en/c4-train.*-of-01024.json.gz"
EVAL_PATTERN = "en/c4-validation.*-of-00008.json.gz"

Sample = tuple[torch.Tensor, torch.Tensor]


@dataclass
class C4DataConfig(DataConfig):
    """C4 files and tokenizer, relative to ``data_dir`` unless absolute.

    ``train_shards`` [first, last] keeps the training files numbered in that range (MLPerf's
    GPT-3 uses 768-1023; empty: all). ``train_subset`` then keeps the first N of them, and
    ``eval_subset`` is the number of packed validation sequences (0: all of the files).
    """

    tokenizer: str = "tokenizer"
    train_pattern: str = TRAIN_PATTERN
    train_shards: list[NonNegativeInt] = field(default_factory=list)
    eval_pattern: str = "en/c4-validation.00000-of-00008.json.gz"
    seq_len: PositiveInt = 2048


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in ``folder``; an InputError names the folder or file at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: tokenizer folder not found")
    tokenizer_json = folder / "tokenizer.json"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if tokenizer_json.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # the Rust side raises plain Exception on a bad file
            raise InputError(f"{tokenizer_json}: not a valid tokenizer file ({err})") from None
    elif vocab.is_file() and merges.is_file():
        try:
            tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as err:
            raise InputError(f"{vocab}: not a valid GPT-2 vocab.json/merges.txt pair "
                             f"({err})") from None
        if tokenizer.token_to_id(EOS_TOKEN) is None:
            raise InputError(f"{vocab}: has no {EOS_TOKEN} token")
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([EOS_TOKEN])
    else:
        raise InputError(f"{folder}: no tokenizer.json, nor vocab.json and merges.txt")
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise InputError(f"{folder}: tokenizer has no {EOS_TOKEN} token")
    return tokenizer


def list_c4_files(data_dir: Path, pattern: str, shards: list[int] | None = None) -> list[Path]:
    """Files of ``data_dir`` matching ``pattern``, sorted; ``shards`` [first, last] keeps only
    those numbered in that range (MLPerf trains on 768-1023). None found is an InputError."""
    files = sorted(p for p in Path(data_dir).glob(pattern) if p.is_file())
    if shards:
        first, last = shards
        files = [p for p in files if first <= _shard_number(p) <= last]
    if not files:
        chosen = f" numbered {shards[0]}-{shards[1]}" if shards else ""
        raise InputError(f"{data_dir}: no C4 files {pattern}{chosen}")
    return files


def _shard_number(path: Path) -> int:
    digits = path.name.split(".")[1].split("-")[0]
    return int(digits) if digits.isdigit() else -1


def read_documents(path: Path) -> Iterator[str]:
    """The ``text`` of every JSON line of a C4 file (gzipped when named ``*.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield _text_of(line, path, number)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read C4 JSON lines ({err})") from None


def _text_of(line: str, path: Path, number: int) -> str:
    try:
        text = json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path}:{number}: not a JSON object with a 'text' field") from None
    if not isinstance(text, str):
        raise InputError(f"{path}:{number}: 'text' is not a string")
    return text


def pack(token_lists: Iterable[list[int]], seq_len: int) -> Iterator[np.ndarray]:
    """Windows of ``seq_len + 1`` tokens with stride ``seq_len`` over the concatenation."""
    pending: list[np.ndarray] = []
    count = 0
    for tokens in token_lists:
        pending.append(np.asarray(tokens, dtype=np.int64))
        count += len(tokens)
        if count <= seq_len:
            continue
        stream = np.concatenate(pending)
        windows = (len(stream) - 1) // seq_len
        for k in range(windows):
            yield stream[k * seq_len: (k + 1) * seq_len + 1]
        rest = stream[windows * seq_len:]
        pending, count = [rest], len(rest)


def tokenize(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Token ids of each text, followed by EOS; no other special tokens are added."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    for text in texts:
        yield [*tokenizer.encode(text, add_special_tokens=False).ids, eos]


def to_sample(window: np.ndarray) -> Sample:
    window = torch.from_numpy(window)
    return window[:-1], window[1:]


def slot_documents(files: list[Path], slot: int, slots: int, seed: int) -> Iterator[str]:
    """The endless document stream of one (rank, worker) slot (see the module docstring)."""
    for pass_number in itertools.count():
        order = np.random.default_rng([seed, pass_number]).permutation(len(files))
        shuffled = [files[i] for i in order]
        if len(shuffled) >= slots:
            for path in shuffled[slot::slots]:
                yield from read_documents(path)
        else:
            documents = itertools.chain.from_iterable(map(read_documents, shuffled))
            yield from itertools.islice(documents, slot, None, slots)


class C4TrainStream(IterableDataset):
    """Endless stream of packed training sequences for one slot (see the module docstring)."""

    def __init__(self, files: list[Path], tokenizer: Tokenizer, seq_len: int, rank: int,
                 world_size: int, seed: int) -> None:
        self.files, self.tokenizer, self.seq_len = files, tokenizer, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __iter__(self) -> Iterator[Sample]:
        slot, slots = worker_shard(self.rank, self.world_size)
        documents = slot_documents(self.files, slot, slots, self.seed)
        return map(to_sample, pack(tokenize(self.tokenizer, documents), self.seq_len))


class C4EvalSet(IterableDataset):
    """This rank's share of the fixed validation subset (see the module docstring)."""

    def __init__(self, files: list[Path], tokenizer: Tokenizer, seq_len: int, sequences: int,
                 rank: int, world_size: int) -> None:
        texts = itertools.chain.from_iterable(map(read_documents, files))
        windows = list(itertools.islice(pack(tokenize(tokenizer, texts), seq_len), sequences))
        if not windows:
            raise InputError(f"{files[0]}: validation files hold less than one sequence of "
                             f"{seq_len + 1} tokens")
        self.num_sequences = len(windows)
        per_rank = math.ceil(len(windows) / world_size)
        mine = windows[rank::world_size]
        self.samples = [to_sample(w) for w in mine] + [_padding_sample(seq_len)] * (
            per_rank - len(mine))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return iter(self.samples[worker::workers])


def _padding_sample(seq_len: int) -> Sample:
    """Token 0 everywhere and no targets: it runs through the model and counts for nothing."""
    return (torch.zeros(seq_len, dtype=torch.int64),
            torch.full((seq_len,), IGNORE_TARGET, dtype=torch.int64))


SUBJECTS = ["The baker", "Der Bär", "Le café", "Naïve Zoë", "El niño", "Σωκράτης", "東京の猫",
            "Ålesund's mayor"]
VERBS = ["sees", "mag", "aime", "visits", "ищет", "paints"]
OBJECTS = ["the crème brûlée", "a smörgåsbord", "the façade", "ein Würstchen", "the piñata",
           "a jalapeño", "the 🌍 globe"]
SITES = ["news", "blog", "shop", "wiki"]


def synthetic_document(rng: np.random.Generator) -> str:
    """A short document whose sentences follow a fixed pattern: same subject and verb, the
    objects in a fixed cycle, the day counting up. Only the first sentence is a surprise."""
    subject, verb = SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))]
    first_object, first_day = int(rng.integers(len(OBJECTS))), int(rng.integers(1, 90))
    sentences = [f"{subject} {verb} {OBJECTS[(first_object + k) % len(OBJECTS)]} on day "
                 f"{first_day + k}." for k in range(int(rng.integers(3, 10)))]
    return " ".join(sentences)


def _record(rng: np.random.Generator, number: int) -> str:
    timestamp = (f"2019-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T"
                 f"{rng.integers(24):02d}:{rng.integers(60):02d}:{rng.integers(60):02d}Z")
    url = f"https://{SITES[rng.integers(len(SITES))]}.example.org/page-{number}"
    record = {"text": synthetic_document(rng), "timestamp": timestamp, "url": url}
    return json.dumps(record, ensure_ascii=False) + "\n"


def train_tokenizer(texts: Iterable[str], folder: Path, vocab_size: int = 1000) -> None:
    """Train a byte-level BPE (GPT-2's kind) on ``texts`` and save it as GPT-2's folder is laid
    out: ``tokenizer.json``, ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``."""
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
                                  show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.save_model(str(folder))
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 2048,
              "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
              "add_prefix_space": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def synthesize(outdir: Path, samples: int, seed: int) -> None:
    """Write ``en/c4-train.*-of-01024.json.gz`` (``samples`` documents in at least four files),
    ``en/c4-validation.00000-of-00008.json.gz`` and a ``tokenizer/`` trained on the corpus."""
    if samples < 4:
        raise InputError(f"{outdir}: need at least 4 training documents, got {samples}")
    rng = np.random.default_rng(seed)
    outdir = Path(outdir)
    (outdir / "en").mkdir(parents=True, exist_ok=True)
    num_files = max(4, math.ceil(samples / 10_000))
    plan = [(f"c4-train.{i:05d}-of-01024.json.gz", len(part))
            for i, part in enumerate(np.array_split(np.arange(samples), num_files))]
    plan.append(("c4-validation.00000-of-00008.json.gz", max(64, samples // 10)))
    with tqdm(total=sum(count for _, count in plan), desc="gptj synth", unit="doc") as bar:
        for name, count in plan:
            with gzip.open(outdir / "en" / name, "wt", encoding="utf-8") as out:
                for _ in range(count):
                    out.write(_record(rng, bar.n))
                    bar.update()
    train_files = list_c4_files(outdir, TRAIN_PATTERN)
    train_tokenizer(itertools.chain.from_iterable(map(read_documents, train_files)),
                    outdir / "tokenizer")
