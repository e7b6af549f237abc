"""The MLPerf BERT pre-training shards (HDF5) and a writer of synthetic ones.

On-disk format (NVIDIA ``create_pretraining_data.py`` / ``chop_hdf5_files.py``): one HDF5 file
per shard, gzip-compressed or not, with

=======================  =====  ==========
``input_ids``            int32  [N, 512]
``input_mask``           int8   [N, 512]
``segment_ids``          int8   [N, 512]
``masked_lm_positions``  int32  [N, 76]
``masked_lm_ids``        int32  [N, 76]
``next_sentence_labels`` int8   [N]
=======================  =====  ==========

Padding is 0; the masked positions come first, sorted, then zeros (position 0 is ``[CLS]``
and never masked). Some shards store the id arrays as int16; any integer type is accepted.

Training is an endless stream per rank (the runner cuts it into blocks of
``training.steps_per_epoch`` steps and evaluates after each, as MLPerf evaluates every N
samples). Each rank owns the files ``files[rank::world_size]``, visits them in a new order on
every pass and reads each in contiguous blocks of rows (fast on gzip chunks), shuffled within
the block; blocks are dealt round-robin to the rank's DataLoader workers. Only one block per
worker is in memory. With fewer files than ranks, all ranks read all files and the blocks are
dealt over every (rank, worker) instead, so no sample is read twice within a pass either way.

Evaluation reads the eval files in order, splits the samples into equal contiguous slices per
rank and pads the short slices with label-less samples, so every rank runs the same number of
batches (needed under FSDP) and the metric counts each real sample once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from benchmarks.core.config import DataConfig
from benchmarks.core.errors import InputError

SEQ_LEN = 512
MAX_PREDICTIONS = 76
VOCAB_SIZE = 30522
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103
FIRST_WORD_ID = 1996
IGNORE_LABEL = -100
SHARD_PATTERNS = ("*.hdf5", "*.h5")

# name -> (dtype of the MLPerf files, per-sample shape: "seq" or "pred" or scalar)
LAYOUT = {
    "input_ids": (np.int32, "seq"),
    "input_mask": (np.int8, "seq"),
    "segment_ids": (np.int8, "seq"),
    "masked_lm_positions": (np.int32, "pred"),
    "masked_lm_ids": (np.int32, "pred"),
    "next_sentence_labels": (np.int8, None),
}
ID_ARRAYS = ("input_ids", "masked_lm_positions", "masked_lm_ids")

#: (model inputs, (masked-LM labels [max_predictions], next-sentence label [])).
Sample = tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BertDataConfig(DataConfig):
    """Shard folders, relative to ``data_dir`` unless absolute. ``train_subset`` counts shard
    files, ``eval_subset`` eval samples (MLPerf: 10000, the whole eval file)."""

    train_dir: str = "training"
    eval_dir: str = "eval"


@dataclass(frozen=True)
class Shard:
    """One shard file, checked: its path, sample count and the two lengths."""

    path: Path
    num_samples: int
    seq_len: int
    max_predictions: int


def inspect_shard(path: Path) -> Shard:
    """Open ``path`` and check the six arrays; an InputError names the file and the problem."""
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in LAYOUT if name not in handle]
            if missing:
                raise InputError(f"{path}: not a BERT shard, dataset '{missing[0]}' missing")
            shapes = {name: handle[name].shape for name in LAYOUT}
            kinds = {name: handle[name].dtype.kind for name in LAYOUT}
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 file ({err})") from None
    bad_type = [name for name, kind in kinds.items() if kind not in "iu"]
    if bad_type:
        raise InputError(f"{path}: dataset '{bad_type[0]}' is not an integer array")
    count = shapes["next_sentence_labels"][0] if shapes["next_sentence_labels"] else -1
    seq_len = shapes["input_ids"][1:] or (-1,)
    pred_len = shapes["masked_lm_positions"][1:] or (-1,)
    expected = {"seq": (count, seq_len[0]), "pred": (count, pred_len[0]), None: (count,)}
    for name, (_, kind) in LAYOUT.items():
        if shapes[name] != expected[kind]:
            raise InputError(f"{path}: dataset '{name}' has shape {shapes[name]}, expected "
                             f"{expected[kind]}")
    if count <= 0:
        raise InputError(f"{path}: shard has no samples")
    return Shard(path, count, seq_len[0], pred_len[0])


def list_shards(folder: Path) -> list[Path]:
    """The shard files of ``folder``, sorted; an InputError when there are none."""
    if not folder.is_dir():
        raise InputError(f"{folder}: BERT shard folder not found")
    files = sorted({p for pattern in SHARD_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise InputError(f"{folder}: no BERT shard files ({', '.join(SHARD_PATTERNS)})")
    return files


def read_rows(handle: h5py.File, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows ``start:stop`` of every array as int64 tensors (int16 and int8 files widen here),
    plus ``labels``: the masked-LM targets with ``IGNORE_LABEL`` in the padded prediction
    slots. Done once per block, so a sample is only a few row views (:func:`make_sample`)."""
    rows = {name: torch.from_numpy(handle[name][start:stop].astype(np.int64)) for name in LAYOUT}
    positions = rows["masked_lm_positions"]
    rows["labels"] = rows["masked_lm_ids"].masked_fill(positions == 0, IGNORE_LABEL)
    return rows


def make_sample(rows: dict[str, torch.Tensor], i: int) -> Sample:
    """Model inputs and labels of row ``i`` of a block from :func:`read_rows`."""
    inputs = {
        "input_ids": rows["input_ids"][i],
        "attention_mask": rows["input_mask"][i],
        "token_type_ids": rows["segment_ids"][i],
        "masked_lm_positions": rows["masked_lm_positions"][i],
    }
    return inputs, (rows["labels"][i], rows["next_sentence_labels"][i])


def empty_sample(seq_len: int, max_predictions: int) -> Sample:
    """A padding sample: only ``[CLS]`` visible and no labels, so it counts for nothing."""
    input_ids = torch.zeros(seq_len, dtype=torch.int64)
    input_ids[0] = CLS_ID
    attention_mask = torch.zeros(seq_len, dtype=torch.int64)
    attention_mask[0] = 1
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(seq_len, dtype=torch.int64),
        "masked_lm_positions": torch.zeros(max_predictions, dtype=torch.int64),
    }
    return inputs, (torch.full((max_predictions,), IGNORE_LABEL, dtype=torch.int64),
                    torch.tensor(IGNORE_LABEL))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def common_lengths(shards: list[Shard]) -> tuple[int, int]:
    """(sequence length, predictions per sequence) shared by all ``shards``."""
    first = shards[0]
    for shard in shards[1:]:
        if (shard.seq_len, shard.max_predictions) != (first.seq_len, first.max_predictions):
            raise InputError(f"{shard.path}: sequence length {shard.seq_len} and "
                             f"{shard.max_predictions} predictions, but {first.path.name} has "
                             f"{first.seq_len} and {first.max_predictions}")
    return first.seq_len, first.max_predictions


class BertTrainStream(IterableDataset):
    """Endless stream of training samples for one rank (see the module docstring)."""

    def __init__(self, files: list[Path], rank: int, world_size: int, seed: int,
                 block_rows: int = 1024) -> None:
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.block_rows = block_rows
        self.files_per_rank = len(files) >= world_size
        mine = files[rank::world_size] if self.files_per_rank else files
        self.shards = [inspect_shard(path) for path in mine]
        self.seq_len, self.max_predictions = common_lengths(self.shards)
        self.num_samples = sum(shard.num_samples for shard in self.shards)

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = _worker()
        if self.files_per_rank:
            slot, slots, order_seed = worker, workers, [self.seed, self.rank]
        else:
            slot, slots = self.rank * workers + worker, self.world_size * workers
            order_seed = [self.seed]
        order = np.random.default_rng(order_seed)
        block_index = 0
        for pass_number in itertools.count():
            for shard_index in order.permutation(len(self.shards)):
                shard = self.shards[shard_index]
                starts = np.arange(0, shard.num_samples, self.block_rows)
                mine = []
                for start in order.permutation(starts):
                    if block_index % slots == slot:
                        mine.append(int(start))
                    block_index += 1
                if mine:
                    yield from self._read_blocks(shard, mine, [self.seed, pass_number, shard_index])

    def _read_blocks(self, shard: Shard, starts: list[int], seed: list[int]) -> Iterator[Sample]:
        with h5py.File(shard.path, "r") as handle:
            for start in starts:
                rows = read_rows(handle, start, min(start + self.block_rows, shard.num_samples))
                shuffle = np.random.default_rng([*seed, start])
                for i in shuffle.permutation(len(rows["input_ids"])):
                    yield make_sample(rows, i)


class BertEvalSet(IterableDataset):
    """This rank's equal share of the eval samples, in file order (see the module docstring)."""

    def __init__(self, files: list[Path], rank: int, world_size: int, limit: int = 0,
                 block_rows: int = 1024) -> None:
        self.shards = [inspect_shard(path) for path in files]
        self.seq_len, self.max_predictions = common_lengths(self.shards)
        self.block_rows = block_rows
        total = sum(shard.num_samples for shard in self.shards)
        self.total = min(total, limit) if limit else total
        self.per_rank = math.ceil(self.total / world_size)
        self.start = min(rank * self.per_rank, self.total)
        self.stop = min(self.start + self.per_rank, self.total)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = _worker()
        per_worker = math.ceil(self.per_rank / workers)
        first = min(worker * per_worker, self.per_rank)
        last = min(first + per_worker, self.per_rank)
        begin = self.start + first
        end = max(begin, min(self.start + last, self.stop))
        yield from self._read(begin, end)
        for _ in range(last - first - (end - begin)):
            yield empty_sample(self.seq_len, self.max_predictions)

    def _read(self, begin: int, end: int) -> Iterator[Sample]:
        offset = 0
        for shard in self.shards:
            lo, hi = max(begin - offset, 0), min(end - offset, shard.num_samples)
            if lo < hi:
                with h5py.File(shard.path, "r") as handle:
                    for start in range(lo, hi, self.block_rows):
                        rows = read_rows(handle, start, min(start + self.block_rows, hi))
                        for i in range(len(rows["input_ids"])):
                            yield make_sample(rows, i)
            offset += shard.num_samples


def write_shard(path: Path, arrays: dict[str, np.ndarray], compression: str | None = "gzip",
                ids_dtype: type = np.int32) -> None:
    """Write one shard in the MLPerf layout; ``ids_dtype`` int16 gives the chopped variant."""
    with h5py.File(path, "w") as handle:
        for name, (dtype, _) in LAYOUT.items():
            handle.create_dataset(name, data=arrays[name].astype(
                ids_dtype if name in ID_ARRAYS else dtype), compression=compression)


class PatternCorpus:
    """Sentences with a learnable structure, encoded as BERT training instances.

    Each instance has a topic (one of ``topics``); the topic owns a few word ids, one of which
    (the head word) fills most positions. A masked word is thus predictable from the unmasked
    words around it, up to the share of the head word. Segment B continues the topic, except
    for "random next" instances (label 1) where it draws from another topic, as in BERT.
    Instances are short (``lengths`` real tokens, zero-padded to 512 as in the real shards) so
    that a tiny model on a CPU sees many of them per second.
    """

    def __init__(self, rng: np.random.Generator, topics: int = 64, words_per_topic: int = 4,
                 head_share: float = 0.85, lengths: tuple[int, int] = (48, 128)) -> None:
        self.lengths = lengths
        word_ids = rng.choice(np.arange(FIRST_WORD_ID, VOCAB_SIZE), topics * words_per_topic,
                              replace=False)
        self.topic_words = word_ids.reshape(topics, words_per_topic)
        rest = (1.0 - head_share) / (words_per_topic - 1)
        self.word_probs = np.array([head_share] + [rest] * (words_per_topic - 1))

    def words(self, rng: np.random.Generator, topic: int, count: int) -> np.ndarray:
        return rng.choice(self.topic_words[topic], count, p=self.word_probs)

    def instance(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sample in the shard layout, masked as ``create_pretraining_data.py`` masks."""
        length = int(rng.integers(self.lengths[0], self.lengths[1] + 1))
        len_a = int(rng.integers(8, length - 8))
        len_b = length - len_a - 3
        topic = int(rng.integers(len(self.topic_words)))
        random_next = bool(rng.random() < 0.5)
        topic_b = int(rng.integers(len(self.topic_words))) if random_next else topic
        tokens = np.concatenate([[CLS_ID], self.words(rng, topic, len_a), [SEP_ID],
                                 self.words(rng, topic_b, len_b), [SEP_ID]])
        input_ids = np.zeros(SEQ_LEN, np.int64)
        input_ids[:length] = tokens
        input_mask = np.zeros(SEQ_LEN, np.int64)
        input_mask[:length] = 1
        segment_ids = np.zeros(SEQ_LEN, np.int64)
        segment_ids[len_a + 2:length] = 1
        candidates = np.array([i for i in range(1, length) if tokens[i] not in (CLS_ID, SEP_ID)])
        count = min(MAX_PREDICTIONS, max(1, round(length * 0.15)))
        positions = np.sort(rng.choice(candidates, count, replace=False))
        masked_ids = input_ids[positions].copy()
        for position in positions:
            draw = rng.random()
            if draw < 0.8:
                input_ids[position] = MASK_ID
            elif draw < 0.9:
                input_ids[position] = rng.integers(FIRST_WORD_ID, VOCAB_SIZE)
        masked_lm_positions = np.zeros(MAX_PREDICTIONS, np.int64)
        masked_lm_positions[:count] = positions
        masked_lm_ids = np.zeros(MAX_PREDICTIONS, np.int64)
        masked_lm_ids[:count] = masked_ids
        return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
                "masked_lm_positions": masked_lm_positions, "masked_lm_ids": masked_lm_ids,
                "next_sentence_labels": np.array(int(random_next))}


def synthesize(outdir: Path, samples: int, seed: int) -> None:
    """Write ``training/part_*_of_K.hdf5`` and ``eval/part_eval_10k.hdf5`` with a learnable pattern.

    ``samples`` training samples go into at least four gzip shards (so up to four ranks get
    their own files); the eval file has a tenth as many (at least 64), from the same topics.
    """
    if samples < 4:
        raise InputError(f"{outdir}: need at least 4 training samples, got {samples}")
    rng = np.random.default_rng(seed)
    corpus = PatternCorpus(rng)
    num_shards = max(4, math.ceil(samples / 4096))
    train_dir, eval_dir = Path(outdir) / "training", Path(outdir) / "eval"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    sizes = [len(part) for part in np.array_split(np.arange(samples), num_shards)]
    eval_samples = max(64, samples // 10)
    plan = [(train_dir / f"part_{i:05d}_of_{num_shards:05d}.hdf5", n) for i, n in enumerate(sizes)]
    plan.append((eval_dir / "part_eval_10k.hdf5", eval_samples))
    with tqdm(total=samples + eval_samples, desc="bert_large synth", unit="sample") as bar:
        for path, count in plan:
            instances = []
            for _ in range(count):
                instances.append(corpus.instance(rng))
                bar.update()
            write_shard(path, {name: np.stack([inst[name] for inst in instances])
                               for name in LAYOUT})
