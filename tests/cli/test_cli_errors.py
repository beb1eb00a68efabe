"""Bad input: every command refuses it before doing work, with one line that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from argd.cli.common import EXIT_SERVER, EXIT_USAGE
from argd.cli.main import main
from tests.cli.conftest import Kit, run_argd


def _cleanse(kit: Kit, out: Path, *extra: str | Path) -> list[str]:
    return [
        "cleanse",
        "--model",
        str(kit.model),
        "--clean",
        str(kit.clean),
        "--out",
        str(out),
        *map(str, extra),
    ]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_installed_script_reports_a_missing_file_on_one_line(tiny_kit: Kit, tmp_path: Path) -> None:
    result = run_argd(
        *_cleanse(tiny_kit, tmp_path / "out", *tiny_kit.spec_flags())[:-2], "--model", "nope.pt"
    )
    # argparse sees --model twice; the last one wins and does not exist.
    assert result.returncode == EXIT_USAGE
    line = _one_error_line(result.stderr)
    assert "no such file: nope.pt" in line and "argd cleanse" in line
    assert result.stdout == ""


def _spec(architecture: str = "small-cnn", classes: str = "10", *extra: str) -> list[str]:
    """Spec flags of the tiny kit's model, with the architecture or class count changed."""
    return [
        "--architecture",
        architecture,
        "--num-classes",
        classes,
        "--in-channels",
        "1",
        "--image-size",
        "16",
        *extra,
    ]


def test_installed_script_rejects_a_model_that_does_not_fit_its_spec(tiny_kit: Kit, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_argd(*_cleanse(tiny_kit, out, *_spec("small-cnn", "5")))
    assert result.returncode == EXIT_USAGE
    line = _one_error_line(result.stderr)
    assert (
        line.startswith("argd: error: --model backdoored.safetensors:") and "fc." in line
    )  # names the tensors
    assert not out.exists()  # nothing is written for refused input


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "needs --architecture, --num-classes, --in-channels, --image-size"),
        (_spec("no-such-net"), "unknown architecture 'no-such-net'"),
        (_spec("small-cnn", "1"), "invalid model spec: num_classes"),
        (_spec("small-cnn", "10", "--mean", "0.5,0.5"), "mean must have 1 or in_channels=1 values"),
        (_spec("small-cnn", "10", "--arch-kwargs", "{not json"), "--arch-kwargs is not valid JSON"),
    ],
)
def test_bad_model_specs(
    tiny_kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    assert main(_cleanse(tiny_kit, tmp_path / "out", *extra)) == EXIT_USAGE
    assert needle in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--epochs", "0"], "invalid parameters: epochs"),
        (["--params", "{params}"], "invalid parameters: no_such_param: Extra inputs are not permitted"),
        (["--params", "{bad_json}"], "is not valid JSON"),
        (["--poisoned", "{poisoned}"], "--poisoned needs --target-label"),
        (
            ["--poisoned", "{poisoned}", "--target-label", "10"],
            "--target-label 10 is not a class index in [0, 10)",
        ),
        (["--target-label", "1"], "--target-label needs --poisoned"),
        (["--test", "{wrong_size}"], "--test wrong_size.npz: images are 28x28 but the model takes 16x16"),
        (["--clean", "{not_data}"], "--clean not_data.npz: unsupported dataset file"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--method", "magic"], "argument --method: invalid choice: 'magic'"),
    ],
)
def test_bad_parameters_and_data(
    tiny_kit: Kit,
    backdoor_kit: Kit,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
) -> None:
    files = {
        "params": tmp_path / "params.json",
        "bad_json": tmp_path / "bad.json",
        "poisoned": tiny_kit.poisoned,
        "wrong_size": tmp_path / "wrong_size.npz",
        "not_data": tmp_path / "not_data.npz",
    }
    files["params"].write_text(json.dumps({"no_such_param": 1}))
    files["bad_json"].write_text("{")
    files["wrong_size"].write_bytes(backdoor_kit.test.read_bytes())  # 28-pixel images
    files["not_data"].write_bytes(b"plain text, not an archive")
    args = [a.format(**files) for a in extra]
    out = tmp_path / "out"
    assert main(_cleanse(tiny_kit, out, *tiny_kit.spec_flags(), *args)) == EXIT_USAGE
    assert needle in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_out_must_be_a_folder(tiny_kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_cleanse(tiny_kit, blocker, *tiny_kit.spec_flags())) == EXIT_USAGE
    assert "exists and is not a folder" in _one_error_line(capsys.readouterr().err)


def test_client_commands_need_a_key_and_a_valid_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ARGD_API_KEY", raising=False)
    monkeypatch.delenv("ARGD_URL", raising=False)
    assert main(["status", "some-job"]) == EXIT_USAGE
    assert "no API key" in _one_error_line(capsys.readouterr().err)
    assert main(["status", "some-job", "--api-key", "k", "--url", "ftp://x"]) == EXIT_USAGE
    assert "--url must start with http" in _one_error_line(capsys.readouterr().err)


def test_unreachable_server_is_a_server_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["jobs", "--url", url, "--api-key", "argd_x"]) == EXIT_SERVER
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot reach the argd server at {url}" in line


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cleanse"]) == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert "the following arguments are required: --model, --clean, --out" in line
    assert main(["no-such-command"]) == EXIT_USAGE
    assert "invalid choice: 'no-such-command'" in _one_error_line(capsys.readouterr().err)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("argd ")
