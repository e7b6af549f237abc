"""The MLPerf BERT phase-1 starting checkpoint, in both forms it is distributed in.

MLPerf Training starts BERT from ``model.ckpt-28252``, a TensorFlow checkpoint of the reference
(mlcommons/training ``language_model/tensorflow/bert``); NVIDIA's PyTorch submissions convert
it once to ``model.ckpt-28252.pt`` (``{"model": state_dict}`` of their ``BertForPreTraining``).
:func:`read_checkpoint` reads either without TensorFlow and returns the tensors under the
names of ``transformers``' ``BertForPreTraining``; :func:`load_init_checkpoint` copies them into
our masked-LM model after checking every name and shape.

A TensorFlow checkpoint (format V2) is a prefix ``P`` with ``P.index`` and data shards
``P.data-NNNNN-of-MMMMM``. The index is a LevelDB table (SSTable): data blocks of
prefix-compressed key/value entries, an index block pointing at them and a 48-byte footer;
each block ends with a compression byte and a masked CRC32C. The key ``""`` holds a
``BundleHeaderProto``, every other key is a variable name whose value is a
``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C of the bytes). The
tensors are raw little-endian arrays in the shards. Both are parsed here with the standard
library and numpy, with the protobuf reader and masked CRC32C of ``benchmarks/core/protobuf.py``
that ``benchmarks/cosmoflow/tfrecord.py`` reads TFRecords with.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.core.checkpoint import load_state_dict_file
from benchmarks.core.errors import InputError, one_line
from benchmarks.core.protobuf import fields, masked_crc32c, read_varint

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
NO_COMPRESSION = 0
#: TensorFlow ``DataType`` enum values and their numpy types (checkpoints hold little-endian).
TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
             9: np.int64, 10: np.bool_, 19: np.float16}

#: Name components of optimizer state and bookkeeping variables in BERT checkpoints: the
#: reference optimizers' slots ``<var>/adam_m``, ``<var>/adam_v``, the step counter, and the
#: names other BERT trainers use (as transformers' and NVIDIA's converters skip them).
OPTIMIZER_STATE = frozenset({"adam_m", "adam_v", "global_step", "LAMB", "LAMB_1",
                             "beta1_power", "beta2_power", "AdamWeightDecayOptimizer",
                             "AdamWeightDecayOptimizer_1", "loss_scale", "good_steps"})

#: TensorFlow variable name -> ``BertForPreTraining`` name, and whether the array is a dense
#: ``kernel`` stored [in, out] (PyTorch's Linear weight is [out, in]). The names are those of
#: the reference ``modeling.py`` and ``run_pretraining.py``.
_TF_RULES: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(pattern + "$"), target, transpose) for pattern, target, transpose in (
        (r"bert/embeddings/(word|position|token_type)_embeddings",
         r"bert.embeddings.\1_embeddings.weight", False),
        (r"bert/embeddings/LayerNorm/gamma", "bert.embeddings.LayerNorm.weight", False),
        (r"bert/embeddings/LayerNorm/beta", "bert.embeddings.LayerNorm.bias", False),
        (r"bert/encoder/layer_(\d+)/attention/self/(query|key|value)/kernel",
         r"bert.encoder.layer.\1.attention.self.\2.weight", True),
        (r"bert/encoder/layer_(\d+)/attention/self/(query|key|value)/bias",
         r"bert.encoder.layer.\1.attention.self.\2.bias", False),
        (r"bert/encoder/layer_(\d+)/(attention/output|intermediate|output)/dense/kernel",
         r"bert.encoder.layer.\1.\2.dense.weight", True),
        (r"bert/encoder/layer_(\d+)/(attention/output|intermediate|output)/dense/bias",
         r"bert.encoder.layer.\1.\2.dense.bias", False),
        (r"bert/encoder/layer_(\d+)/(attention/output|output)/LayerNorm/gamma",
         r"bert.encoder.layer.\1.\2.LayerNorm.weight", False),
        (r"bert/encoder/layer_(\d+)/(attention/output|output)/LayerNorm/beta",
         r"bert.encoder.layer.\1.\2.LayerNorm.bias", False),
        (r"bert/pooler/dense/kernel", "bert.pooler.dense.weight", True),
        (r"bert/pooler/dense/bias", "bert.pooler.dense.bias", False),
        (r"cls/predictions/transform/dense/kernel", "cls.predictions.transform.dense.weight",
         True),
        (r"cls/predictions/transform/dense/bias", "cls.predictions.transform.dense.bias", False),
        (r"cls/predictions/transform/LayerNorm/gamma",
         "cls.predictions.transform.LayerNorm.weight", False),
        (r"cls/predictions/transform/LayerNorm/beta",
         "cls.predictions.transform.LayerNorm.bias", False),
        (r"cls/predictions/output_bias", "cls.predictions.bias", False),
        # The next-sentence head multiplies by output_weights^T: already [out, in].
        (r"cls/seq_relationship/output_weights", "cls.seq_relationship.weight", False),
        (r"cls/seq_relationship/output_bias", "cls.seq_relationship.bias", False),
    ))

#: Heads of ``BertForPreTraining`` that a ``BertForMaskedLM`` does not have; a checkpoint's
#: values for them are dropped when the model lacks them.
PRETRAINING_ONLY = ("bert.pooler.", "cls.seq_relationship.")
#: Tied to the word embeddings and the prediction bias: never stored separately.
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
#: Tensors whose first dimension is the vocabulary (NVIDIA pads it to a multiple of 8).
VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
              "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def tf_to_hf_name(tf_name: str) -> tuple[str, bool] | None:
    """The ``BertForPreTraining`` name of a reference variable and whether to transpose it;
    None for a name no rule covers."""
    for pattern, target, transpose in _TF_RULES:
        if pattern.match(tf_name):
            # "attention/output" is captured whole: its slash becomes a dot too
            return pattern.sub(target, tf_name).replace("/", "."), transpose
    return None


def is_optimizer_state(tf_name: str) -> bool:
    return not OPTIMIZER_STATE.isdisjoint(tf_name.split("/"))


# --- LevelDB table decoding -------------------------------------------------------------------

def _block(data: memoryview, offset: int, size: int, where: str) -> memoryview:
    """The contents of the table block at ``offset``, its trailer's CRC checked."""
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise ValueError(f"{where} block at byte {offset} runs past the end of the file")
    compression = data[end]
    (stored_crc,) = struct.unpack_from("<I", data, end + 1)
    if masked_crc32c(data[offset:end + 1]) != stored_crc:
        raise ValueError(f"CRC mismatch in the {where} block at byte {offset}")
    if compression != NO_COMPRESSION:
        raise ValueError(f"{where} block at byte {offset} is compressed (type {compression}); "
                         "TensorFlow writes checkpoint indexes uncompressed")
    return data[offset:end]


def _block_entries(block: memoryview, where: str) -> Iterator[tuple[bytes, memoryview]]:
    """The (key, value) entries of a block: shared-prefix length, unshared length, value
    length (varints), the key's unshared bytes, the value; then the restart array."""
    if len(block) < 4:
        raise ValueError(f"{where} block is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise ValueError(f"{where} block has a corrupt restart array")
    pos, key = 0, b""
    while pos < end:
        shared, pos = read_varint(block, pos, where)
        unshared, pos = read_varint(block, pos, where)
        value_length, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_length > end:
            raise ValueError(f"{where} block has a corrupt entry at byte {pos}")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        yield key, block[pos:pos + value_length]
        pos += value_length


def _block_handle(buf: memoryview, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, where)
    size, pos = read_varint(buf, pos, where)
    return offset, size, pos


def read_table(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """Every (key, value) of a LevelDB table, in key order."""
    view = memoryview(data)
    if len(view) < FOOTER_SIZE:
        raise ValueError("file is shorter than a table footer")
    footer = view[len(view) - FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (bad table magic number)")
    _, _, pos = _block_handle(footer, 0, "footer")  # the metaindex block: unused by TF
    index_offset, index_size, _ = _block_handle(footer, pos, "footer")
    index = _block(view, index_offset, index_size, "index")
    for _, handle in _block_entries(index, "index"):
        offset, size, _ = _block_handle(handle, 0, "index")
        yield from _block_entries(_block(view, offset, size, "data"), "data")


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor of a TensorFlow checkpoint lives (``BundleEntryProto``)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked CRC32C of the tensor's bytes
    sliced: bool  # a partitioned variable, stored as slices elsewhere


def _shape(buf: memoryview, where: str) -> tuple[int, ...]:
    dims = []
    for number, _, value in fields(buf, where):
        if number == 2:  # TensorShapeProto.dim
            dims.append(next((size for n, _, size in fields(value, where) if n == 1), 0))
        elif number == 3 and value:
            raise ValueError(f"{where} has a shape of unknown rank")
    return tuple(dims)


def _entry(name: str, value: memoryview) -> BundleEntry:
    values = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0,
              "sliced": False}
    names = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}
    for number, _, field in fields(value, f"entry '{name}'"):
        if number == 2:
            values["shape"] = _shape(field, f"entry '{name}'")
        elif number == 7:
            values["sliced"] = True
        elif number in names:
            values[names[number]] = field
    return BundleEntry(name=name, **values)


def _header(value: memoryview) -> tuple[int, int]:
    """(num_shards, endianness) of the ``BundleHeaderProto`` (LITTLE = 0)."""
    header = {number: field for number, _, field in fields(value, "bundle header")}
    return int(header.get(1, 1)), int(header.get(2, 0))


def tf_checkpoint_prefix(path: str | Path) -> Path | None:
    """The prefix of a TensorFlow checkpoint given as its prefix or its ``.index`` file."""
    path = Path(path)
    if path.name.endswith(".index"):
        return path.with_name(path.name[:-len(".index")])
    return path if path.with_name(path.name + ".index").is_file() else None


def shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def read_tf_index(prefix: Path) -> tuple[int, dict[str, BundleEntry]]:
    """The number of data shards and every entry of ``prefix.index``."""
    index = prefix.with_name(prefix.name + ".index")
    try:
        data = index.read_bytes()
    except OSError as err:
        raise InputError(f"{index}: cannot read TensorFlow checkpoint index "
                         f"({err.strerror})") from None
    try:
        num_shards, endianness, entries = 1, 0, {}
        for key, value in read_table(data):
            if not key:
                num_shards, endianness = _header(value)
            else:
                name = key.decode()
                entries[name] = _entry(name, value)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{index}: {one_line(err)}") from None
    if endianness != 0:
        raise InputError(f"{index}: big-endian checkpoints are not supported")
    return num_shards, entries


def _read_tensor(entry: BundleEntry, shards: list[np.memmap], prefix: Path,
                 num_shards: int) -> np.ndarray:
    where = f"{prefix} tensor '{entry.name}'"
    if entry.sliced:
        raise InputError(f"{where}: partitioned variables are not supported")
    if entry.dtype not in TF_DTYPES:
        raise InputError(f"{where}: unsupported TensorFlow dtype {entry.dtype}")
    if entry.shard_id >= num_shards:
        raise InputError(f"{where}: shard {entry.shard_id} of {num_shards} does not exist")
    dtype = np.dtype(TF_DTYPES[entry.dtype]).newbyteorder("<")
    shard = shards[entry.shard_id]
    if entry.offset + entry.size > len(shard) or \
            entry.size != dtype.itemsize * int(np.prod(entry.shape, dtype=np.int64)):
        raise InputError(f"{where}: {entry.size} bytes at offset {entry.offset} do not fit "
                         f"shape {list(entry.shape)} or the shard "
                         f"{shard_path(prefix, entry.shard_id, num_shards).name}")
    raw = shard[entry.offset:entry.offset + entry.size]
    if masked_crc32c(memoryview(raw)) != entry.crc32c:
        raise InputError(f"{where}: CRC mismatch (corrupt data file)")
    return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(entry.shape)


def read_tf_checkpoint(prefix: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a TensorFlow BERT checkpoint under ``BertForPreTraining`` names
    (optimizer state skipped, kernels transposed); an InputError names the first tensor no
    rule covers."""
    num_shards, entries = read_tf_index(prefix)
    wanted = []
    for name in sorted(entries):
        if is_optimizer_state(name):
            continue
        mapped = tf_to_hf_name(name)
        if mapped is None:
            raise InputError(f"{prefix}: tensor '{name}' is not a BERT variable (no mapping "
                             "to the PyTorch model)")
        wanted.append((entries[name], *mapped))
    shards = []
    for shard in range(num_shards):
        path = shard_path(prefix, shard, num_shards)
        try:
            shards.append(np.memmap(path, dtype=np.uint8, mode="r")
                          if path.stat().st_size else np.zeros(0, np.uint8))
        except OSError as err:
            raise InputError(f"{path}: cannot read checkpoint data ({err.strerror})") from None
    tensors = {}
    for entry, hf_name, transpose in wanted:
        array = _read_tensor(entry, shards, prefix, num_shards)
        tensor = torch.from_numpy(array.copy())
        tensors[hf_name] = tensor.t().contiguous() if transpose else tensor
    return tensors


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A converted PyTorch checkpoint: a state dict, optionally under ``"model"`` (NVIDIA),
    with ``module.`` prefixes removed and NVIDIA's fused-activation ``dense_act`` layers named
    as ``transformers`` names them (``dense``)."""
    saved = load_state_dict_file(path, "initial checkpoint", [("model",)],
                                 "checkpoint is not a state dict")
    return {name.removeprefix("module.").replace(".dense_act.", ".dense."): value
            for name, value in saved.items()}


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files whose bytes are the checkpoint's weights: the data shards of a TensorFlow
    checkpoint (in shard order), or the PyTorch file."""
    prefix = tf_checkpoint_prefix(path)
    if prefix is None:
        return [Path(path)]
    num_shards, _ = read_tf_index(prefix)
    return [shard_path(prefix, shard, num_shards) for shard in range(num_shards)]


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a BERT checkpoint under ``BertForPreTraining`` names: a TensorFlow
    checkpoint when ``path`` is its prefix or ``.index`` file, else a PyTorch file."""
    path = Path(path)
    prefix = tf_checkpoint_prefix(path)
    if prefix is not None:
        return read_tf_checkpoint(prefix)
    if not path.exists():
        raise InputError(f"{path}: initial checkpoint not found (neither a PyTorch file nor "
                         "a TensorFlow checkpoint prefix with a .index file)")
    return read_torch_checkpoint(path)


def match_to_model(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                   path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for a model whose state dict is ``expected``.

    Pooler and next-sentence weights are dropped when the model has no such heads; rows of a
    vocabulary padded to the next multiple of 8 (as NVIDIA pads it) are cut off. Raises an
    InputError naming the first tensor that the model lacks, that is missing, or whose shape
    differs."""
    selected = {}
    for name, tensor in tensors.items():
        if name not in expected:
            if name.startswith(PRETRAINING_ONLY) or name in TIED:
                continue
            raise InputError(f"{path}: tensor '{name}' has no place in the model")
        want = tuple(expected[name].shape)
        if name in VOCAB_ROWS and tensor.shape[0] > want[0] and tensor.shape[0] % 8 == 0 \
                and tensor.shape[0] - want[0] < 8 and tuple(tensor.shape[1:]) == want[1:]:
            tensor = tensor[:want[0]]
        if tuple(tensor.shape) != want:
            raise InputError(f"{path}: tensor '{name}' has shape {list(tensor.shape)}, the "
                             f"configured model needs {list(want)}")
        selected[name] = tensor
    missing = [name for name in expected if name not in selected and name not in TIED]
    if missing:
        raise InputError(f"{path}: tensor '{missing[0]}' is missing ({len(missing)} model "
                         "tensors have no value in the checkpoint)")
    return selected


def load_init_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Copy a BERT checkpoint (either form) into ``model``, a ``transformers``
    ``BertForMaskedLM`` or ``BertForPreTraining``; every model tensor must get a value."""
    path = Path(path)
    expected = model.state_dict()
    selected = match_to_model(read_checkpoint(path), expected, path)
    with torch.no_grad():
        for name, tensor in selected.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
