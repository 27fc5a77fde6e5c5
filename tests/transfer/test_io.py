"""Weight-file readers and writers: formats, checkpoint wrappers, prefixes, dtypes, and one-line errors naming the
file for everything a user can hand us (missing, corrupt, truncated, pickled objects, unknown types, empty)."""

import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.transfer.io import read_state_dict, write_state_dict

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _sd() -> dict:
    """A small torch state dict with the awkward members: a 0-d int64 counter, a 1-element tensor, float16."""
    g = torch.Generator().manual_seed(0)
    return {"conv1.weight": torch.randn(4, 3, 3, 3, generator=g), "bn1.weight": torch.rand(4, generator=g),
            "bn1.running_mean": torch.randn(4, generator=g), "bn1.num_batches_tracked": torch.tensor(7),
            "prelu.weight": torch.tensor([0.25]), "fc.weight": torch.randn(2, 4, generator=g).half()}


def _assert_same(got: dict, want: dict, ordered: bool = True) -> None:
    """Same keys (in the same order, except for .safetensors, which sorts by dtype and name), dtypes, bytes."""
    assert list(got) == list(want) if ordered else sorted(got) == sorted(want)
    for k, v in want.items():
        v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        assert isinstance(got[k], np.ndarray) and got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].tobytes() == v.tobytes(), k


def _no_leftovers(folder) -> None:
    assert not [f for f in os.listdir(folder) if ".tmp" in f]


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin", "W.PT"])
def test_pt_state_dict(tmp_path, name):
    sd = _sd()
    torch.save(sd, tmp_path / name)
    _assert_same(read_state_dict(tmp_path / name), sd)  # a PathLike works too


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state_dict", "network", "net"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_pt_checkpoint_wrappers_and_data_parallel_prefix(tmp_path, wrap, prefix):
    sd = _sd()
    inner = {prefix + k: v for k, v in sd.items()}
    # a training checkpoint: the weights beside an optimizer state, an epoch count and a config
    torch.save({wrap: inner, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
                "config": {"arch": "resnet18"}}, tmp_path / "ckpt.pt")
    _assert_same(read_state_dict(tmp_path / "ckpt.pt"), sd)


def test_nested_wrappers_and_partial_prefix(tmp_path):
    sd = _sd()
    torch.save({"state_dict": {"model": {"module." + k: v for k, v in sd.items()}}}, tmp_path / "a.pt")
    _assert_same(read_state_dict(tmp_path / "a.pt"), sd)
    # "module." on only some keys is not a DataParallel wrapper: keys stay as they are
    mixed = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    torch.save(mixed, tmp_path / "b.pt")
    assert list(read_state_dict(tmp_path / "b.pt")) == ["module.a", "b"]
    # a state dict with tensors at the top level is not a wrapper, even beside a "state_dict" entry
    torch.save({"w": torch.zeros(1), "state_dict": {"a": torch.zeros(1)}}, tmp_path / "c.pt")
    with pytest.raises(MedjaxError, match=r"c\.pt: entry 'state_dict' is a dict, not a tensor"):
        read_state_dict(tmp_path / "c.pt")


def test_bfloat16_and_float8_tensors_become_float32(tmp_path):
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    sd = {"a": w.bfloat16(), "b": w.to(torch.float8_e4m3fn), "c": torch.arange(3)}
    torch.save(sd, tmp_path / "bf.pt")
    got = read_state_dict(tmp_path / "bf.pt")
    assert got["a"].dtype == got["b"].dtype == np.float32 and got["c"].dtype == np.int64
    np.testing.assert_array_equal(got["a"], sd["a"].float().numpy())  # exact: float32 holds every bfloat16
    np.testing.assert_array_equal(got["b"], sd["b"].float().numpy())
    # the same from .safetensors (which safetensors.numpy hands over as ml_dtypes bfloat16)
    safetensors_numpy.save_file({"a": sd["a"].float().numpy().astype(ml_dtypes.bfloat16)}, tmp_path / "bf.safetensors")
    got = read_state_dict(tmp_path / "bf.safetensors")
    assert got["a"].dtype == np.float32
    np.testing.assert_array_equal(got["a"], sd["a"].float().numpy())


def test_safetensors_and_npz(tmp_path):
    arrays = {k: v.numpy() for k, v in _sd().items()}
    safetensors_numpy.save_file(arrays, str(tmp_path / "w.safetensors"))
    _assert_same(read_state_dict(tmp_path / "w.safetensors"), arrays, ordered=False)
    np.savez(tmp_path / "w.npz", **arrays)
    _assert_same(read_state_dict(tmp_path / "w.npz"), arrays)
    np.savez(tmp_path / "m.npz", **{"module." + k: v for k, v in arrays.items()})
    _assert_same(read_state_dict(tmp_path / "m.npz"), arrays)


def test_safetensors_and_npz_need_no_torch(tmp_path):
    """Read and write both formats in a process where `import torch` fails; .pt then says it needs torch."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from medjax.errors import MedjaxError
        from medjax.transfer import read_state_dict, write_state_dict
        folder = {str(tmp_path)!r}
        state = {{"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.n": np.array(3)}}
        for ext in (".safetensors", ".npz"):
            write_state_dict(folder + "/w" + ext, state)
            got = read_state_dict(folder + "/w" + ext)
            assert sorted(got) == sorted(state) and all(np.array_equal(got[k], state[k]) for k in state), ext
            assert got["a.n"].shape == ()
        for call in (lambda: read_state_dict(folder + "/given.pt"), lambda: write_state_dict(folder + "/o.pt", state)):
            try:
                call()
                raise AssertionError("no error")
            except MedjaxError as e:
                assert "needs torch" in str(e) or "need torch" in str(e), e
        assert sys.modules["torch"] is None
        print("ok")
    """)
    torch.save({"a": torch.zeros(1)}, tmp_path / "given.pt")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    _no_leftovers(tmp_path)


class Opaque:
    pass


@pytest.mark.parametrize("payload, refused", [(lambda: {"w": Opaque()}, "Opaque"),
                                              (lambda: torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear")])
def test_pickled_objects_are_refused_in_one_line_naming_the_file(tmp_path, payload, refused):
    torch.save(payload(), tmp_path / "obj.pt")
    with pytest.raises(MedjaxError) as info:
        read_state_dict(tmp_path / "obj.pt")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'obj.pt'}: torch.load(weights_only=True) refused it") and refused in msg
    assert "model.state_dict()" in msg and "\n" not in msg and "\x1b" not in msg


def _corrupt_files(folder) -> dict:
    torch.save(_sd(), folder / "ok.pt")
    good_pt = (folder / "ok.pt").read_bytes()
    safetensors_numpy.save_file({k: v.numpy() for k, v in _sd().items()}, str(folder / "ok.safetensors"))
    good_st = (folder / "ok.safetensors").read_bytes()
    np.savez(folder / "ok.npz", a=np.zeros(100))
    good_npz = (folder / "ok.npz").read_bytes()
    return {"truncated.pt": good_pt[: len(good_pt) // 2], "garbage.pth": b"not a checkpoint at all " * 20,
            "empty.pt": b"", "plain_pickle.pt": pickle.dumps({"a": 1}, protocol=4),  # not torch.save's format
            "truncated.safetensors": good_st[: len(good_st) // 2], "garbage.safetensors": b"\xff" * 64,
            "truncated.npz": good_npz[: len(good_npz) // 2], "garbage.npz": b"PK\x03\x04 nonsense"}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_corrupt_and_truncated_files_raise_medjax_error_naming_the_file(tmp_path):
    for name, data in _corrupt_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MedjaxError) as info:
            read_state_dict(tmp_path / name)
        msg = str(info.value)
        assert str(tmp_path / name) in msg and "corrupt, truncated or not a" in msg, (name, msg)
        assert "\n" not in msg and "refused" not in msg, (name, msg)


def test_missing_directory_unknown_extension_and_non_state_dicts(tmp_path):
    with pytest.raises(MedjaxError, match=r"weight file not found: .*nope\.pt"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(MedjaxError, match=r"is not a weight file \(a directory\?\)"):
        read_state_dict(tmp_path)
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(MedjaxError, match=r"w\.h5: unknown weight file type '\.h5'; supported: \.pt, \.pth"):
        read_state_dict(tmp_path / "w.h5")
    with pytest.raises(MedjaxError, match=r"o\.ckpt: unknown weight file type '\.ckpt'"):
        write_state_dict(tmp_path / "o.ckpt", {"a": np.zeros(1)})
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(MedjaxError, match=r"t\.pt holds a Tensor, not a state dict"):
        read_state_dict(tmp_path / "t.pt")
    torch.save({"w": torch.zeros(1), "name": "resnet"}, tmp_path / "s.pt")
    with pytest.raises(MedjaxError, match=r"s\.pt: entry 'name' is a str, not a tensor"):
        read_state_dict(tmp_path / "s.pt")


def test_empty_state_dicts(tmp_path):
    torch.save({}, tmp_path / "e.pt")
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "e2.pt")
    safetensors_numpy.save_file({}, str(tmp_path / "e.safetensors"))
    np.savez(tmp_path / "e.npz")
    for name in ("e.pt", "e2.pt", "e.safetensors", "e.npz"):
        with pytest.raises(MedjaxError, match=rf"{name} holds no tensors"):
            read_state_dict(tmp_path / name)


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin", "w.safetensors", "w.npz"])
def test_write_round_trips_bitwise(tmp_path, name):
    base = {k: v.numpy() for k, v in _sd().items()}
    state = {**base,
             "fc.weight_t": base["conv1.weight"].reshape(4, 27).T,  # non-contiguous
             "ro": np.arange(4.0),  # read-only, as np.asarray(jax array) is
             "mask": np.array([True, False])}
    state["ro"].setflags(write=False)
    (tmp_path / name).write_bytes(b"old contents")  # replaced
    write_state_dict(tmp_path / name, state)
    _no_leftovers(tmp_path)
    got = read_state_dict(tmp_path / name)
    _assert_same(got, {k: np.ascontiguousarray(v).reshape(v.shape) for k, v in state.items()},
                 ordered=not name.endswith(".safetensors"))
    assert got["bn1.num_batches_tracked"].shape == ()  # 0-d stays 0-d (np.ascontiguousarray would make it (1,))
    if name.endswith((".pt", ".pth", ".bin")):
        loaded = torch.load(tmp_path / name, weights_only=True)
        assert loaded["bn1.num_batches_tracked"].shape == () and loaded["fc.weight"].dtype == torch.float16


def test_written_pt_loads_into_a_torch_module(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.PReLU())
    state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    write_state_dict(tmp_path / "net.pt", state)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.PReLU())
    fresh.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))  # strict: names, shapes, 0-d counter
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k


def test_write_bfloat16(tmp_path):
    a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    write_state_dict(tmp_path / "b.pt", {"a": a})
    assert torch.load(tmp_path / "b.pt", weights_only=True)["a"].dtype == torch.bfloat16
    write_state_dict(tmp_path / "b.safetensors", {"a": a})
    assert safetensors_numpy.load_file(str(tmp_path / "b.safetensors"))["a"].dtype == ml_dtypes.bfloat16
    for name in ("b.pt", "b.safetensors"):
        got = read_state_dict(tmp_path / name)["a"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, a.astype(np.float32))
    with pytest.raises(MedjaxError, match=r"b\.npz: \.npz cannot hold bfloat16 \(entry 'a'\)"):
        write_state_dict(tmp_path / "b.npz", {"a": a})
    assert not (tmp_path / "b.npz").exists()
    _no_leftovers(tmp_path)


def test_failed_writes_leave_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    write_state_dict(target, {"a": np.zeros(2, np.float32)})
    before = target.read_bytes()

    def crash(arrays, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_numpy, "save_file", crash)
    with pytest.raises(MedjaxError, match=r"cannot write .*w\.safetensors: .*No space left on device"):
        write_state_dict(target, {"a": np.ones(2, np.float32)})
    assert target.read_bytes() == before  # the old file is intact
    _no_leftovers(tmp_path)

    with pytest.raises(MedjaxError, match=r"entry 'x' has dtype object, not a numeric array"):
        write_state_dict(tmp_path / "o.npz", {"x": np.array([object()])})
    with pytest.raises(MedjaxError, match=r"cannot write .*missing_dir.*w\.npz"):
        write_state_dict(tmp_path / "missing_dir" / "w.npz", {"a": np.zeros(1)})
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_torch_compile_and_data_parallel_prefixes_are_stripped(tmp_path):
    from medjax.transfer.io import read_state_dict, write_state_dict

    path = tmp_path / "w.npz"
    write_state_dict(path, {"_orig_mod.module.fc.weight": np.ones((2, 3), np.float32),
                            "_orig_mod.module.fc.bias": np.zeros(2, np.float32)})
    assert sorted(read_state_dict(path)) == ["fc.bias", "fc.weight"]
