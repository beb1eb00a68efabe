"""Safe model intake: real files written to tmp_path, read back through the public functions."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from argd.core.architectures import build_model
from argd.core.errors import InvalidModel
from argd.core.spec import ModelSpec
from argd.core.weights import load_model, parameter_count, read_state_dict, save_weights, sha256_file

REAL_CHECKPOINT = Path("/work/shared/fixtures/nad-wrn-16-1-badnets-cifar10.pth.tar")


class _CreatesMarker:
    """Unpickling this object would run `open(marker, "w")`: proof that a loader executed pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _trained_like(spec: ModelSpec) -> nn.Module:
    """A model whose batch-norm statistics and weights differ from a fresh build."""
    torch.manual_seed(0)
    model = build_model(spec)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, spec.in_channels, spec.image_size, spec.image_size))
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module, spec: ModelSpec) -> bool:
    x = torch.rand(2, spec.in_channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x))


def test_checkpoint_shaped_like_the_nad_release_loads_strictly(tmp_path: Path, wrn_spec: ModelSpec) -> None:
    model = _trained_like(wrn_spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    path = tmp_path / "WRN-16-1-S-model_best.pth.tar"
    torch.save(
        {
            "epoch": 25,
            "state_dict": model.state_dict(),
            "best_prec": 85.65,
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    loaded = load_model(path, wrn_spec)
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert _same_outputs(loaded, model, wrn_spec)


@pytest.mark.skipif(not REAL_CHECKPOINT.exists(), reason="the released checkpoint is only on the dev machine")
def test_released_nad_checkpoint_loads(wrn_spec: ModelSpec) -> None:
    model = load_model(REAL_CHECKPOINT, wrn_spec)
    assert parameter_count(model) == 175_066


def test_dataparallel_prefix_and_model_wrapper(tmp_path: Path, small_spec: ModelSpec) -> None:
    model = _trained_like(small_spec)
    path = tmp_path / "dp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}, path)
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())
    assert _same_outputs(load_model(path, small_spec), model, small_spec)


def test_numpy_scalars_beside_the_weights_are_accepted(tmp_path: Path, small_spec: ModelSpec) -> None:
    model = _trained_like(small_spec)
    path = tmp_path / "np.pt"
    torch.save({"state_dict": model.state_dict(), "best_acc": np.float64(0.91), "epoch": np.int64(4)}, path)
    assert set(read_state_dict(path)) == set(model.state_dict())


def test_safetensors_round_trip_with_metadata_and_shared_tensors(
    tmp_path: Path, small_spec: ModelSpec
) -> None:
    model = _trained_like(small_spec)
    path = tmp_path / "out.safetensors"
    save_weights(model, path, metadata={"architecture": "small-cnn"})
    assert _same_outputs(load_model(path, small_spec), model, small_spec)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"architecture": "small-cnn"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    shared = torch.arange(6.0)
    save_weights({"a": shared, "b": shared, "view": shared[2:4]}, tmp_path / "shared.safetensors")
    back = read_state_dict(tmp_path / "shared.safetensors")
    assert torch.equal(back["b"], shared) and torch.equal(back["view"], torch.tensor([2.0, 3.0]))


def test_safetensors_are_sniffed_without_the_suffix(tmp_path: Path, small_spec: ModelSpec) -> None:
    model = _trained_like(small_spec)
    save_weights(model, tmp_path / "w.safetensors")
    content_addressed = tmp_path / "0123abcd"
    content_addressed.write_bytes((tmp_path / "w.safetensors").read_bytes())
    assert set(read_state_dict(content_addressed)) == set(model.state_dict())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": _CreatesMarker(marker)}}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InvalidModel) as caught:
        read_state_dict(path)
    assert not marker.exists()
    if container == "torch.save":
        assert "open" in caught.value.message  # names the global it found
    assert "state_dict()" in caught.value.message  # and says what to upload instead


def test_whole_pickled_module_is_refused_with_advice(tmp_path: Path, small_spec: ModelSpec) -> None:
    path = tmp_path / "model.pt"
    torch.save(build_model(small_spec), path)
    with pytest.raises(InvalidModel) as caught:
        read_state_dict(path)
    assert "a whole pickled model" in caught.value.message
    assert caught.value.details["found"][0] == "argd.core.architectures.small_cnn.SmallCNN"
    assert "state_dict()" in caught.value.message
    assert any("SmallCNN" in name for name in caught.value.details["found"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    with pytest.raises(InvalidModel, match="TorchScript archives are not accepted"):
        read_state_dict(path)


def test_truncated_safetensors_is_refused(tmp_path: Path, small_spec: ModelSpec) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(build_model(small_spec), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match="corrupt or truncated safetensors"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"PK\x03\x04 not really a zip"])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(InvalidModel):
        read_state_dict(path)


def test_recompressed_checkpoint_declaring_too_much_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1 << 20)}, plain)  # 4 MiB of zeros
    squeezed = tmp_path / "squeezed.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(squeezed, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    assert squeezed.stat().st_size < 100_000
    with pytest.raises(InvalidModel, match=r"unpacks to .* over the limit of 1048576"):
        read_state_dict(squeezed, max_bytes=1 << 20)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path: Path, wrn_spec: ModelSpec) -> None:
    resnet = build_model(ModelSpec(architecture="resnet18", num_classes=10, in_channels=3, image_size=32))
    path = tmp_path / "resnet.pt"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(InvalidModel) as caught:
        load_model(path, wrn_spec)
    details = caught.value.details
    assert "block1.layer.0.conv1.weight" in details["missing"]
    assert "layer1.0.conv1.weight" in details["unexpected"]
    assert {"key": "conv1.weight", "expected": [16, 3, 3, 3], "found": [64, 3, 3, 3]} in details["mismatched"]
    assert "missing" in caught.value.message and "unexpected" in caught.value.message


def test_wrong_class_count_reports_the_fc_shape(wrn_spec: ModelSpec) -> None:
    state = build_model(wrn_spec.model_copy(update={"num_classes": 43})).state_dict()
    with pytest.raises(InvalidModel) as caught:
        load_model(state, wrn_spec)
    assert caught.value.details["mismatched"][0] == {
        "key": "fc.weight",
        "expected": [10, 64],
        "found": [43, 64],
    }
    assert caught.value.details["missing"] == [] and caught.value.details["unexpected"] == []
    assert "fc.weight: expected [10, 64], found [43, 64]" in caught.value.message


def test_non_finite_weights_are_refused_by_name(small_spec: ModelSpec) -> None:
    state = build_model(small_spec).state_dict()
    state["stage2.0.weight"][0, 0, 0, 0] = float("nan")
    state["fc.bias"][1] = float("inf")
    with pytest.raises(InvalidModel) as caught:
        load_model(state, small_spec)
    assert "stage2.0.weight" in caught.value.message and "fc.bias" in caught.value.message


def test_negative_bn_variance_fails_the_dummy_forward(small_spec: ModelSpec) -> None:
    state = build_model(small_spec).state_dict()
    state["stage1.1.running_var"].fill_(-1.0)
    with pytest.raises(InvalidModel, match="non-finite logits"):
        load_model(state, small_spec)


def test_state_dict_with_non_tensor_entries_is_refused(tmp_path: Path, small_spec: ModelSpec) -> None:
    state: dict[str, object] = dict(build_model(small_spec).state_dict())
    state["note"] = "hello"
    path = tmp_path / "mixed.pt"
    torch.save(state, path)
    with pytest.raises(InvalidModel, match="'note'"):
        read_state_dict(path)


def test_limits_and_dtypes(tmp_path: Path, small_spec: ModelSpec) -> None:
    path = tmp_path / "many.pt"
    torch.save({f"t{i}": torch.zeros(1) for i in range(50)}, path)
    with pytest.raises(InvalidModel, match="limit of 10"):
        read_state_dict(path, max_tensors=10)
    torch.save({"w": torch.zeros(2, dtype=torch.complex64)}, path)
    with pytest.raises(InvalidModel, match="complex64"):
        read_state_dict(path)
    state = build_model(small_spec).state_dict()
    state["fc.weight"] = state["fc.weight"].to(torch.int32)
    with pytest.raises(InvalidModel) as caught:
        load_model(state, small_spec)
    assert caught.value.details["mismatched"] == [
        {"key": "fc.weight", "expected": "torch.float32", "found": "torch.int32"}
    ]


def test_half_precision_and_missing_batch_counters_still_load(small_spec: ModelSpec) -> None:
    model = _trained_like(small_spec)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    loaded = load_model(state, small_spec)
    assert loaded.state_dict()["fc.weight"].dtype == torch.float32
    assert torch.allclose(loaded.state_dict()["fc.weight"], model.state_dict()["fc.weight"], atol=1e-3)


def test_sha256_file_streams(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1024) == hashlib.sha256(data).hexdigest()
