"""Our GGUF reader: every metadata type, tensor views, and one clear error for each kind of damage."""

import time

import numpy as np
import pytest
from conftest import model_path
from gguf import GGMLQuantizationType, GGUFWriter

from llamapy.gguf import GGUFError, GGUFFile


def write_gguf(path, arch="llama", tensors=None, extra=None, alignment=None):
    w = GGUFWriter(str(path), arch)
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 2**63)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 2.25)
    w.add_array("t.arr_i32", [1, 2, 3])
    w.add_array("t.arr_str", ["a", "bé", ""])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    for name, array in (tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def sample(tmp_path):
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(64, dtype=np.float16)}
    return write_gguf(tmp_path / "s.gguf", tensors=tensors)


def test_every_value_type(sample):
    kv = GGUFFile(sample).kv
    assert kv["general.architecture"] == "llama"
    assert (kv["t.u8"], kv["t.i8"], kv["t.u16"], kv["t.i16"]) == (200, -5, 60000, -30000)
    assert (kv["t.u32"], kv["t.i32"], kv["t.u64"], kv["t.i64"]) == (4_000_000_000, -2_000_000_000, 2**63, -(2**62))
    assert kv["t.f32"] == 1.5 and kv["t.f64"] == 2.25 and kv["t.bool"] is True
    assert kv["t.str"] == "héllo"
    assert list(kv["t.arr_i32"]) == [1, 2, 3]
    assert kv["t.arr_str"] == ["a", "bé", ""]
    assert [list(a) for a in kv["t.arr_nested"]] == [[1, 2], [3]]


def test_tensor_views(sample):
    f = GGUFFile(sample)
    a = f.tensors["a"]
    assert a.shape == (4, 3) and a.type_name == "F32"
    np.testing.assert_array_equal(f.array("a"), np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(f.array("b"), np.ones(64, dtype=np.float16))
    assert f.raw("a").shape == (3, 16)


def test_custom_alignment(tmp_path):
    path = write_gguf(tmp_path / "al.gguf", tensors={"x": np.arange(8, dtype=np.float32)}, alignment=64)
    f = GGUFFile(path)
    assert f.data_offset % 64 == 0
    np.testing.assert_array_equal(f.array("x"), np.arange(8, dtype=np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        GGUFFile(tmp_path / "nope.gguf")


def test_bad_magic(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(p)


def test_bad_version(sample):
    data = bytearray(sample.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    sample.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 99"):
        GGUFFile(sample)


@pytest.mark.parametrize("keep", [30, 200, 500])
def test_truncated_header(sample, keep):
    sample.write_bytes(sample.read_bytes()[:keep])
    with pytest.raises(GGUFError, match="truncated|outside the file"):
        GGUFFile(sample)


def test_truncated_tensor_data(sample):
    sample.write_bytes(sample.read_bytes()[:-8])
    with pytest.raises(GGUFError, match="tensor b lies outside the file"):
        GGUFFile(sample)


def test_unknown_tensor_type(sample):
    data = bytearray(sample.read_bytes())
    # the type field of tensor "b" follows its name and one dimension
    at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00b") + 9 + 4 + 8
    assert int.from_bytes(data[at:at + 4], "little") == GGMLQuantizationType.F16
    data[at:at + 4] = (77).to_bytes(4, "little")
    sample.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="unsupported type"):
        GGUFFile(sample)


def test_huge_string_length(sample):
    data = bytearray(sample.read_bytes())
    at = data.index(b"general.architecture") - 8
    data[at:at + 8] = (2**60).to_bytes(8, "little")
    sample.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(sample)


def test_gemma_vocabulary_reads_whole():
    # Speed of opening is measured by `llamapy bench`'s load figures, not asserted here.
    f = GGUFFile(model_path("gemma3"))
    tokens = f.kv["tokenizer.ggml.tokens"]
    assert len(tokens) == 262144 and tokens[:3] == ["<pad>", "<eos>", "<bos>"]


def test_string_arrays_decode_like_one_by_one(tmp_path):
    """Bulk decoding of string arrays: a NUL inside a string and invalid UTF-8 decode as they would alone."""
    texts = ["plain", "", "with\0nul", "é ✓ 🙂", "tail"]
    path = write_gguf(tmp_path / "s.gguf", tensors={"x": np.zeros(4, np.float32)})
    w = GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_array("t.texts", texts)
    w.add_array("t.bytes", ["ok", "bad\xff".encode("latin-1").decode("latin-1")])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    kv = GGUFFile(tmp_path / "t.gguf").kv
    assert kv["t.texts"] == texts
    assert GGUFFile(path).kv["t.arr_str"] == ["a", "bé", ""]
    raw = bytearray((tmp_path / "t.gguf").read_bytes())
    at = raw.index(b"bad\xc3\xbf")  # gguf-py wrote ÿ as UTF-8; make it a lone invalid byte
    raw[at + 3:at + 5] = b"\xff!"
    (tmp_path / "u.gguf").write_bytes(bytes(raw))
    assert GGUFFile(tmp_path / "u.gguf").kv["t.bytes"] == ["ok", "bad\ufffd!"]


def test_huge_string_array_count_is_refused_at_once(sample):
    data = bytearray(sample.read_bytes())
    at = data.index(b"t.arr_str") + len("t.arr_str") + 4 + 4  # key, value type ARRAY, element type STRING
    data[at:at + 8] = (2**62).to_bytes(8, "little")
    sample.write_bytes(bytes(data))
    start = time.perf_counter()
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(sample)
    assert time.perf_counter() - start < 5  # not a loop of 2^62 steps


def test_overlapping_tensors(sample):
    data = bytearray(sample.read_bytes())
    # tensor "b" (64 × F16) gets the offset of tensor "a": their data would overlap
    at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00b") + 9 + 4 + 8 + 4
    data[at:at + 8] = (0).to_bytes(8, "little")
    sample.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="runs into the data of tensor"):
        GGUFFile(sample)
