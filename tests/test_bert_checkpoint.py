"""The MLPerf BERT phase-1 checkpoint in both forms: TensorFlow (read without TensorFlow) and
NVIDIA's converted PyTorch file.

The TensorFlow checkpoints are written here by a small LevelDB-table writer with the variable
names and shapes of the reference (mlcommons/training ``language_model/tensorflow/bert``
``modeling.py``: ``get_masked_lm_output``/``get_next_sentence_output`` in
``run_pretraining.py``; optimizer slots ``<var>/adam_m``, ``<var>/adam_v`` from
``optimization.py``) for a tiny BERT, so every tensor's destination can be checked.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForPreTraining

from benchmarks.bert_large.checkpoint import (
    TABLE_MAGIC,
    checkpoint_files,
    load_init_checkpoint,
    read_checkpoint,
)
from benchmarks.bert_large.data import synthesize
from benchmarks.bert_large.model import BertMaskedLM, BertModelConfig, hf_config
from benchmarks.core.errors import InputError
from benchmarks.core.mllog import sha256sum
from benchmarks.core.protobuf import encode_varint, masked_crc32c
from tests.conftest import run_mlbench

# A vocabulary of 42 is padded to 48 by NVIDIA's converter, as 30522 is to 30528.
TINY = BertModelConfig(vocab_size=42, hidden_size=8, num_layers=2, num_heads=2,
                       intermediate_size=16, max_positions=32, dropout=0.0,
                       attention_dropout=0.0)
DT_FLOAT, DT_INT64 = 1, 9


def reference_variables(cfg: BertModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Every trainable variable of the reference pre-training graph, with its TF shape."""
    h, inner, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = {
        "bert/embeddings/word_embeddings": [vocab, h],
        "bert/embeddings/token_type_embeddings": [cfg.type_vocab_size, h],
        "bert/embeddings/position_embeddings": [cfg.max_positions, h],
        "bert/embeddings/LayerNorm/beta": [h],
        "bert/embeddings/LayerNorm/gamma": [h],
    }
    for layer in range(cfg.num_layers):
        prefix = f"bert/encoder/layer_{layer}"
        for part in ("query", "key", "value"):
            shapes[f"{prefix}/attention/self/{part}/kernel"] = [h, h]
            shapes[f"{prefix}/attention/self/{part}/bias"] = [h]
        shapes.update({
            f"{prefix}/attention/output/dense/kernel": [h, h],
            f"{prefix}/attention/output/dense/bias": [h],
            f"{prefix}/attention/output/LayerNorm/beta": [h],
            f"{prefix}/attention/output/LayerNorm/gamma": [h],
            f"{prefix}/intermediate/dense/kernel": [h, inner],
            f"{prefix}/intermediate/dense/bias": [inner],
            f"{prefix}/output/dense/kernel": [inner, h],
            f"{prefix}/output/dense/bias": [h],
            f"{prefix}/output/LayerNorm/beta": [h],
            f"{prefix}/output/LayerNorm/gamma": [h],
        })
    shapes.update({
        "bert/pooler/dense/kernel": [h, h],
        "bert/pooler/dense/bias": [h],
        "cls/predictions/transform/dense/kernel": [h, h],
        "cls/predictions/transform/dense/bias": [h],
        "cls/predictions/transform/LayerNorm/beta": [h],
        "cls/predictions/transform/LayerNorm/gamma": [h],
        "cls/predictions/output_bias": [vocab],
        "cls/seq_relationship/output_weights": [2, h],
        "cls/seq_relationship/output_bias": [2],
    })
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def expected_destination(tf_name: str) -> tuple[str, bool]:
    """Where a reference variable must land in ``BertForPreTraining``, written out by hand."""
    table = {
        "bert/embeddings/word_embeddings": "bert.embeddings.word_embeddings.weight",
        "bert/embeddings/token_type_embeddings": "bert.embeddings.token_type_embeddings.weight",
        "bert/embeddings/position_embeddings": "bert.embeddings.position_embeddings.weight",
        "bert/embeddings/LayerNorm/beta": "bert.embeddings.LayerNorm.bias",
        "bert/embeddings/LayerNorm/gamma": "bert.embeddings.LayerNorm.weight",
        "bert/pooler/dense/kernel": "bert.pooler.dense.weight",
        "bert/pooler/dense/bias": "bert.pooler.dense.bias",
        "cls/predictions/transform/dense/kernel": "cls.predictions.transform.dense.weight",
        "cls/predictions/transform/dense/bias": "cls.predictions.transform.dense.bias",
        "cls/predictions/transform/LayerNorm/beta": "cls.predictions.transform.LayerNorm.bias",
        "cls/predictions/transform/LayerNorm/gamma":
            "cls.predictions.transform.LayerNorm.weight",
        "cls/predictions/output_bias": "cls.predictions.bias",
        "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
        "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    }
    if tf_name in table:
        return table[tf_name], tf_name.endswith("/kernel")
    parts = tf_name.split("/")
    layer = parts[2].removeprefix("layer_")
    leaf = {"kernel": "weight", "gamma": "weight", "bias": "bias", "beta": "bias"}[parts[-1]]
    middle = ".".join(parts[3:-1])
    return f"bert.encoder.layer.{layer}.{middle}.{leaf}", parts[-1] == "kernel"


# --- a TensorFlow checkpoint writer (LevelDB table + BundleEntryProto), for the tests ----------

def _field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def bundle_entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    shape_proto = b"".join(_field_bytes(2, _field_varint(1, dim)) for dim in shape)
    return (_field_varint(1, dtype) + _field_bytes(2, shape_proto) + _field_varint(4, offset)
            + _field_varint(5, size) + encode_varint(6 << 3 | 5) + struct.pack("<I", crc))


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 3) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for count, (key, value) in enumerate(entries):
        shared = 0
        if count % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        out += key[shared:] + value
        previous = key
    for restart in restarts:
        out += struct.pack("<I", restart)
    return bytes(out + struct.pack("<I", len(restarts)))


def _handle(offset: int, size: int) -> bytes:
    return encode_varint(offset) + encode_varint(size)


def write_table(path: Path, items: list[tuple[bytes, bytes]], block_size: int = 200) -> None:
    """A LevelDB table of sorted ``items``, split into data blocks of about ``block_size``."""
    out, index, pending = bytearray(), [], []

    def flush() -> None:
        contents = _block(pending)
        index.append((pending[-1][0], _handle(len(out), len(contents))))
        out.extend(contents + b"\0" + struct.pack("<I", masked_crc32c(contents + b"\0")))
        pending.clear()

    for item in sorted(items):
        pending.append(item)
        if sum(len(k) + len(v) for k, v in pending) >= block_size:
            flush()
    if pending:
        flush()
    handles = []
    for block in (_block([]), _block(index, restart_interval=1)):  # metaindex, index
        handles.append(_handle(len(out), len(block)))
        out.extend(block + b"\0" + struct.pack("<I", masked_crc32c(block + b"\0")))
    footer = b"".join(handles)
    out.extend(footer + b"\0" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC))
    path.write_bytes(bytes(out))


def write_tf_checkpoint(prefix: Path, variables: dict[str, np.ndarray],
                        optimizer_slots: bool = True) -> None:
    """``prefix.index`` and ``prefix.data-00000-of-00001`` as TensorFlow's BundleWriter writes
    them: the reference's variables, their LAMB slots and ``global_step``."""
    tensors = dict(variables)
    if optimizer_slots:
        for name, array in variables.items():
            tensors[f"{name}/adam_m"] = np.zeros_like(array)
            tensors[f"{name}/adam_v"] = np.ones_like(array)
        tensors["global_step"] = np.array(28252, dtype=np.int64)
    data, items = bytearray(), [(b"", _field_varint(1, 1) + _field_bytes(3, _field_varint(1, 1)))]
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<"))
        payload = raw.tobytes()
        dtype = DT_INT64 if raw.dtype == np.int64 else DT_FLOAT
        items.append((name.encode(), bundle_entry(dtype, raw.shape, len(data), len(payload),
                                                  masked_crc32c(payload))))
        data += payload
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
    write_table(prefix.with_name(prefix.name + ".index"), items)


# --- tests -------------------------------------------------------------------------------------

@pytest.fixture
def tf_checkpoint(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    variables = reference_variables(TINY)
    write_tf_checkpoint(tmp_path / "model.ckpt-28252", variables)
    return tmp_path / "model.ckpt-28252", variables


def test_every_reference_tensor_lands_in_bert_for_pretraining(tf_checkpoint):
    prefix, variables = tf_checkpoint
    model = BertForPreTraining(hf_config(TINY))
    load_init_checkpoint(model, prefix)
    state = model.state_dict()
    assert len(variables) == len(state) - 2  # all but the tied decoder weight and bias
    for tf_name, array in variables.items():
        destination, transposed = expected_destination(tf_name)
        expected = torch.from_numpy(array.T.copy() if transposed else array)
        assert torch.equal(state[destination], expected), tf_name
    assert torch.equal(state["cls.predictions.decoder.weight"],
                       state["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(state["cls.predictions.decoder.bias"], state["cls.predictions.bias"])


def test_masked_lm_model_takes_all_but_the_pretraining_heads(tf_checkpoint):
    prefix, variables = tf_checkpoint
    model = BertMaskedLM(TINY)
    load_init_checkpoint(model.mlm, prefix.with_name(prefix.name + ".index"))
    state = model.mlm.state_dict()
    for tf_name, array in variables.items():
        destination, transposed = expected_destination(tf_name)
        if destination.startswith(("bert.pooler.", "cls.seq_relationship.")):
            assert destination not in state
            continue
        expected = torch.from_numpy(array.T.copy() if transposed else array)
        assert torch.equal(state[destination], expected), tf_name


def test_tf_checkpoint_hash_covers_the_data_file(tf_checkpoint):
    prefix, _ = tf_checkpoint
    files = checkpoint_files(prefix)
    assert files == [prefix.with_name(prefix.name + ".data-00000-of-00001")]
    import hashlib
    assert sha256sum(files) == hashlib.sha256(files[0].read_bytes()).hexdigest()


def _nvidia_state(variables: dict[str, np.ndarray], pad_vocab_to: int) -> dict[str, torch.Tensor]:
    """The converted file of NVIDIA's PyTorch submission: their module names (``dense_act``
    for the layers with a fused activation), the vocabulary padded to a multiple of 8."""
    state = {}
    for tf_name, array in variables.items():
        name, transposed = expected_destination(tf_name)
        tensor = torch.from_numpy(array.T.copy() if transposed else array)
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            padding = torch.zeros(pad_vocab_to - tensor.shape[0], *tensor.shape[1:])
            tensor = torch.cat([tensor, padding])
        name = name.replace("intermediate.dense.", "intermediate.dense_act.")
        name = name.replace("transform.dense.", "transform.dense_act.")
        name = name.replace("pooler.dense.", "pooler.dense_act.")
        state[name] = tensor
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    return state


def test_converted_pytorch_checkpoint_lands_like_the_tf_one(tf_checkpoint, tmp_path):
    prefix, variables = tf_checkpoint
    torch.save({"model": _nvidia_state(variables, pad_vocab_to=48)},
               tmp_path / "model.ckpt-28252.pt")
    from_pt, from_tf = BertMaskedLM(TINY), BertMaskedLM(TINY)
    load_init_checkpoint(from_pt.mlm, tmp_path / "model.ckpt-28252.pt")
    load_init_checkpoint(from_tf.mlm, prefix)
    for (name, a), b in zip(from_tf.state_dict().items(), from_pt.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert set(read_checkpoint(tmp_path / "model.ckpt-28252.pt")) == {
        expected_destination(name)[0] for name in variables} | {"cls.predictions.decoder.weight"}


def test_vocab_padding_only_up_to_the_next_multiple_of_8(tf_checkpoint, tmp_path):
    _, variables = tf_checkpoint
    torch.save({"model": _nvidia_state(variables, pad_vocab_to=56)}, tmp_path / "pad.pt")
    with pytest.raises(InputError, match=r"pad.pt: tensor 'bert.embeddings.word_embeddings."
                                         r"weight' has shape \[56, 8\].*\[42, 8\]"):
        load_init_checkpoint(BertMaskedLM(TINY).mlm, tmp_path / "pad.pt")


def test_refusals_name_the_file_and_the_first_bad_tensor(tmp_path):
    model = BertMaskedLM(TINY).mlm
    with pytest.raises(InputError, match="nothere.ckpt: initial checkpoint not found"):
        load_init_checkpoint(model, tmp_path / "nothere.ckpt")

    wrong = reference_variables(TINY)
    wrong["bert/encoder/layer_1/intermediate/dense/kernel"] = np.zeros((8, 12), np.float32)
    write_tf_checkpoint(tmp_path / "shape", wrong)
    with pytest.raises(InputError, match=r"tensor 'bert.encoder.layer.1.intermediate.dense."
                                         r"weight' has shape \[12, 8\]"):
        load_init_checkpoint(model, tmp_path / "shape")

    short = reference_variables(TINY)
    del short["bert/encoder/layer_0/output/LayerNorm/beta"]
    write_tf_checkpoint(tmp_path / "short", short)
    with pytest.raises(InputError, match="tensor 'bert.encoder.layer.0.output.LayerNorm.bias' "
                                         "is missing"):
        load_init_checkpoint(model, tmp_path / "short")

    extra = reference_variables(TINY)
    extra["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.zeros((8, 8), np.float32)
    write_tf_checkpoint(tmp_path / "extra", extra)
    with pytest.raises(InputError, match="tensor 'bert/encoder/layer_0/attention/self/rotary/"
                                         "kernel' is not a BERT variable"):
        load_init_checkpoint(model, tmp_path / "extra")

    bigger = reference_variables(BertModelConfig(**{**TINY.__dict__, "num_layers": 3}))
    write_tf_checkpoint(tmp_path / "deeper", bigger)
    with pytest.raises(InputError, match="tensor 'bert.encoder.layer.2.*has no place"):
        load_init_checkpoint(model, tmp_path / "deeper")


def test_corrupt_files_are_refused(tf_checkpoint):
    prefix, _ = tf_checkpoint
    data = prefix.with_name(prefix.name + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # inside the first tensor in name order
    data.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="tensor '.*': CRC mismatch"):
        read_checkpoint(prefix)
    index = prefix.with_name(prefix.name + ".index")
    raw = bytearray(index.read_bytes())
    raw[10] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"\.index: CRC mismatch in the data block"):
        read_checkpoint(prefix)
    index.write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="bad table magic"):
        read_checkpoint(prefix)


def test_cli_logs_the_hash_and_refuses_a_bad_checkpoint_with_exit_2(tmp_path):
    synthesize(tmp_path / "data", samples=64, seed=0)
    smoke = dict(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=256,
                 vocab_size=30522, max_positions=512)
    variables = reference_variables(BertModelConfig(**smoke))
    write_tf_checkpoint(tmp_path / "data" / "ckpt", variables)
    args = ("train", "bert_large", "--config", "smoke", "--data-dir", str(tmp_path / "data"),
            "--set", "training.n_epochs=1", "--set", "training.steps_per_epoch=1",
            "--set", "model.init_checkpoint=ckpt")
    done = run_mlbench(*args)
    assert done.returncode in (0, 3), done.stderr
    digest = sha256sum([tmp_path / "data" / "ckpt.data-00000-of-00001"])
    assert done.events("init_checkpoint_sha256sum")[0]["value"] == digest
    division = done.events("submission_division")[0]
    assert division["value"] == "open" and "target 0.7" in division["metadata"]["reason"]

    del variables["cls/predictions/output_bias"]
    write_tf_checkpoint(tmp_path / "data" / "ckpt", variables)
    done = run_mlbench(*args)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "tensor 'cls.predictions.bias' is missing" in errors[0]
    assert not done.events("run_start")
