"""`argd bench defense` and `argd bench speed` end to end at tiny sizes: the reports exist and hold the rows.

The defense run goes through `argd.bench.cli.main` exactly as `argd bench defense` does, on real Fashion-MNIST
(skipped where the Debian package is missing) and on a synthetic dataset in the project's .npz format with
another architecture, so both data paths and the cache are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from argd.bench.attacks import QUICK_ATTACKS
from argd.bench.backdoor import ATTACK_SETTINGS
from argd.bench.cli import DEFAULT_DATA_ROOT, main
from argd.bench.defense import (
    ABLATIONS,
    DefenseConfig,
    attack_kwargs,
    attack_rate,
    clean_subset,
    defense_params,
    parse_attack_settings,
    teacher_key,
)
from argd.bench.tune import GRID
from argd.core.data import ImageData, save_npz
from argd.core.params import CleanseParams

HAVE_FMNIST = (DEFAULT_DATA_ROOT / "train-images-idx3-ubyte.gz").is_file()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = [
    "--train-size", "600",
    "--test-size", "200",
    "--clean-size", "96",
    "--backdoor-epochs", "1",
    "--epochs", "1",
    "--teacher-epochs", "1",
]  # fmt: skip


def _read(out: Path) -> tuple[str, dict]:
    for name in ("defense.md", "defense.json", "defense.png"):
        assert (out / name).is_file(), f"{name} missing"
    assert (out / "defense.png").read_bytes()[:8] == PNG_MAGIC
    return (out / "defense.md").read_text(), json.loads((out / "defense.json").read_text())


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_defense_end_to_end_on_fashion_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "results", tmp_path / "cache"
    argv = ["defense", *TINY, "--attacks", "badnets", "--out", str(out), "--cache-dir", str(cache)]
    code = main(
        [
            *argv,
            "--reference",
            "--ablations", "no-edge,uniform-beta",
            "--ablation-attacks", "badnets",
            "--seeds", "0,1",
            "--seed-defenses", "fst,argd",
        ]
    )  # fmt: skip
    assert code == 0
    markdown, results = _read(out)

    assert list(results["attacks"]) == ["badnets"]
    row = results["attacks"]["badnets"]
    assert set(row["defenses"]) == {"finetune", "nad", "fst", "ft-sam", "argd", "argd-reference"}
    assert row["backdoor"]["cached"] is False
    assert row["backdoor"]["poisoned_images"] == 60  # 10 % of 600
    assert 100 < row["backdoor"]["eval_images"] < 200  # the non-target images of the 200 test images
    for name, metrics in row["defenses"].items():
        for key in ("acc", "asr", "der"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key, metrics[key])
    # Fine-tuning is the same schedule with every distillation weight at zero.
    ft, argd_params = row["defenses"]["finetune"]["params"], row["defenses"]["argd"]["params"]
    assert ft["method"] == "finetune" and argd_params["method"] == "argd"
    assert {k: ft[k] for k in ("lr", "lr_schedule", "epochs", "seed")} == {
        k: argd_params[k] for k in ("lr", "lr_schedule", "epochs", "seed")
    }
    assert row["defenses"]["argd-reference"]["params"]["lr_schedule"] == "step"
    # The baselines at their published settings: NAD from a plainly fine-tuned teacher, FST without weight
    # decay, FT-SAM with its radius and label smoothing.
    assert row["defenses"]["nad"]["params"]["teacher"] == "finetune"
    assert row["defenses"]["nad"]["params"]["student_sam"] is False
    assert row["defenses"]["fst"]["params"]["method"] == "fst"
    assert row["defenses"]["ft-sam"]["params"]["sam_rho"] == 2.0
    # ARGD's term magnitudes are recorded beside the cross-entropy.
    assert set(row["defenses"]["argd"]["term_scales"]["first_epoch"]) == {
        "ce", "node", "edge", "emb", "logit", "uploaded", "head"
    }  # fmt: skip
    assert row["defenses"]["nad"]["term_scales"]["first_epoch"]["edge"] == 0.0
    # The retuning attack ran on every cleansed model and on the clean model (the floor).
    assert 0.0 <= row["retune_floor"]["asr"] <= 1.0
    assert all(0.0 <= d["retune"]["asr"] <= 1.0 for d in row["defenses"].values())
    # Seeds: the repeated defenses ran once per seed, with mean and spread over the runs.
    assert set(row["seeds"]) == {"fst", "argd"}
    argd_seeds = row["seeds"]["argd"]
    assert argd_seeds["seeds"] == [0, 1]
    assert argd_seeds["asr"]["min"] <= argd_seeds["asr"]["mean"] <= argd_seeds["asr"]["max"]
    assert argd_seeds["asr"]["min"] <= row["defenses"]["argd"]["asr"] <= argd_seeds["asr"]["max"]
    assert row["defenses"]["argd"]["wall_seconds"] > 0
    # Ablations: each requested variant has a badnets entry with its override applied.
    assert set(results["ablations"]) == {"no-edge", "uniform-beta"}
    assert results["ablations"]["no-edge"]["attacks"]["badnets"]["params"]["w_edge"] == 0.0
    beta = results["ablations"]["uniform-beta"]["attacks"]["badnets"]["params"]["beta"]
    assert len(set(beta)) == 1 and beta[0] == pytest.approx(3000.0)
    assert results["clean_model"]["acc"] is not None
    names = [c["name"] for c in results["checks"]]
    assert "ARGD ASR never above 5 %" in names and "ARGD mean ASR after retuning below FST's" in names
    assert results["settings"]["clean_images"] == 96

    assert "| badnets |" in markdown and "| **mean** |" in markdown
    assert "ARGD (reference preset)" in markdown and "no-edge" in markdown
    assert "after the retuning attack" in markdown and "Seeds 0, 1" in markdown and "Wall time" in markdown
    printed = capsys.readouterr().out
    assert "[badnets] backdoored model" in printed and "[badnets] argd:" in printed

    # A rerun with the same settings loads the backdoored model from the cache instead of training it.
    code = main([*argv, "--no-reference", "--ablations", "none"])
    assert code == 0
    _, again = _read(out)
    assert again["attacks"]["badnets"]["backdoor"]["cached"] is True
    assert again["attacks"]["badnets"]["backdoor"]["asr"] == row["backdoor"]["asr"]
    assert set(again["attacks"]["badnets"]["defenses"]) == {"finetune", "nad", "fst", "ft-sam", "argd"}


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_defense_quick_is_the_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`argd bench defense --quick` as documented: its attacks, ARGD and FST, a real backdoor."""
    out = tmp_path / "quick"
    assert main(["defense", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    markdown, results = _read(out)
    assert tuple(results["attacks"]) == QUICK_ATTACKS
    assert results["settings"]["quick"] is True and results["settings"]["train_images"] == 4000
    for attack, row in results["attacks"].items():
        assert set(row["defenses"]) == {"fst", "argd"}, attack
        assert f"| {attack} |" in markdown
    # Five epochs on 4,000 images implant real backdoors: Blend fully, BadNets well above chance
    # (BadNets' ASR after so short a training varies between machines: 43 % here on 2026-12-01).
    asr = {attack: row["backdoor"]["asr"] for attack, row in results["attacks"].items()}
    assert asr["blend"] > 0.9 and all(v > 0.3 for v in asr.values()), asr
    assert results["attacks"]["badnets"]["backdoor"]["acc"] > 0.7
    printed = capsys.readouterr().out
    assert all(f"[{attack}] argd:" in printed for attack in QUICK_ATTACKS)


def _synthetic(count: int, seed: int) -> ImageData:
    """Three colour classes of 16x16 images told apart by a bright bar's position."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % 3
    x = torch.rand(count, 3, 16, 16, generator=g) * 0.4
    x[y == 0, :, 3:5, 2:14] += 0.6
    x[y == 1, :, 2:14, 3:5] += 0.6
    x[y == 2, :, 10:12, 2:14] += 0.6
    return ImageData((x.clamp(0, 1) * 255).to(torch.uint8), y)


def test_defense_on_npz_dataset_with_another_architecture(tmp_path: Path) -> None:
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    save_npz(_synthetic(300, 1), train)
    save_npz(_synthetic(90, 2), test)
    out = tmp_path / "out"
    argv = [
        "defense", "--train-npz", str(train), "--test-npz", str(test), "--architecture", "small-cnn",
        "--attacks", "blend,sig,blend@0.1", "--clean-size", "60", "--backdoor-epochs", "1", "--epochs", "1",
        "--teacher-epochs", "1", "--reference", "--ablations", "none", "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--clean-label-rate", "0.05", "--attack-set", "sig.delta=25",
        "--attack-set", "blend.rate=0.2",
    ]  # fmt: skip
    code = main(argv)
    assert code == 0
    _, results = _read(out)
    # Clean-label attacks poison at --clean-label-rate (target class only), an attack's own rate setting wins
    # over the shared one, and --attack-set reaches the attack itself.
    assert results["attacks"]["blend"]["backdoor"]["poisoned_images"] == 60  # blend.rate: 20 % of 300
    assert results["attacks"]["sig"]["backdoor"]["poisoned_images"] == 15  # 5 % of 300, all class 0
    assert results["settings"]["attack_settings"]["sig"]["delta"] == 25
    assert results["settings"]["attack_settings"]["cl"] == ATTACK_SETTINGS["cl"]
    assert results["settings"]["dataset"] == "train.npz"
    assert results["settings"]["spec"]["in_channels"] == 3
    assert results["settings"]["spec"]["image_size"] == 16
    assert results["settings"]["spec"]["num_classes"] == 3
    # Runs over different rows merge into one report; runs of other settings refuse to.
    part = tmp_path / "part"
    part.mkdir()
    other = {**results, "attacks": {"wanet": results["attacks"]["sig"]}}
    (part / "defense.json").write_text(json.dumps(other))
    assert main(["merge", str(out), str(part), "--out", str(tmp_path / "merged")]) == 0
    merged_md, merged = _read(tmp_path / "merged")
    assert list(merged["attacks"]) == ["blend", "sig", "blend@0.1", "wanet"]
    assert "| wanet |" in merged_md and merged["settings"]["merged_from"] == [str(out), str(part)]
    (part / "defense.json").write_text(json.dumps({**other, "settings": {**other["settings"], "seed": 9}}))
    assert main(["merge", str(out), str(part), "--out", str(tmp_path / "bad")]) == 2
    assert results["attacks"]["blend@0.1"]["backdoor"]["poisoned_images"] == 30  # the row's own rate
    assert results["attacks"]["blend@0.1"]["backdoor"]["rate"] == 0.1
    assert set(results["attacks"]["blend"]["defenses"]) == {
        "finetune", "nad", "fst", "ft-sam", "argd", "argd-reference"
    }  # fmt: skip


def test_merge_reads_old_results_with_the_british_keys(tmp_path: Path) -> None:
    """The 2026-11-26 results predate the one spelling ("defences"); merge reads them, writes "defenses"."""
    earlier = Path(__file__).resolve().parents[2] / "bench/results/2026-11-26/defense.json"
    old = json.loads(earlier.read_text())
    assert "defences" in old["settings"] and all("defences" in row for row in old["attacks"].values())
    rows = list(old["attacks"])
    parts = [tmp_path / "a", tmp_path / "b"]
    for part, names in zip(parts, (rows[:2], rows[2:]), strict=True):
        part.mkdir()
        piece = {**old, "attacks": {name: old["attacks"][name] for name in names}}
        (part / "defense.json").write_text(json.dumps(piece))
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    markdown, merged = _read(tmp_path / "merged")
    assert list(merged["attacks"]) == rows
    assert merged["settings"]["defenses"] == old["settings"]["defences"]
    for name, row in merged["attacks"].items():
        assert "defences" not in row and row["defenses"] == old["attacks"][name]["defences"]
    assert merged["summary"]["argd"]["asr"] == pytest.approx(old["summary"]["argd"]["asr"])
    assert "| ARGD |" in markdown and "| wanet |" in markdown


def test_merge_keeps_each_parts_clean_model_when_they_differ(tmp_path: Path) -> None:
    """Parts run on two machines trained two clean models: each row keeps its own, and the report says so."""
    earlier = json.loads((Path(__file__).resolve().parents[2] / "bench/results/defense.json").read_text())
    rows = list(earlier["attacks"])

    def rows_of(names: list[str]) -> dict[str, Any]:
        return {n: {k: v for k, v in earlier["attacks"][n].items() if k != "clean_model"} for n in names}

    parts = [tmp_path / "a", tmp_path / "b"]
    for part, names, acc in zip(parts, (rows[:2], rows[2:]), (0.9056, 0.9092), strict=True):
        part.mkdir()
        piece = {
            **earlier,
            "attacks": rows_of(names),
            "clean_model": {**earlier["clean_model"], "acc": acc},
        }
        (part / "defense.json").write_text(json.dumps(piece))
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    markdown, merged = _read(tmp_path / "merged")
    assert [merged["attacks"][name]["clean_model"]["acc"] for name in rows[:3]] == [0.9056, 0.9056, 0.9092]
    assert f"90.56 % (rows {', '.join(rows[:2])}); 90.92 % (rows {', '.join(rows[2:])})" in markdown
    check = next(c for c in merged["checks"] if c["name"].startswith("every backdoored ACC"))
    assert check["detail"].startswith("clean 90.56/90.92;")
    # Parts that share one clean model merge as before: no per-row copy.
    (parts[1] / "defense.json").write_text(json.dumps({**earlier, "attacks": rows_of(rows[2:])}))
    (parts[0] / "defense.json").write_text(json.dumps({**earlier, "attacks": rows_of(rows[:2])}))
    # A part written before a CleanseParams field existed merges with one that has it at its default.
    older = json.loads((parts[0] / "defense.json").read_text())
    for params in older["settings"]["params"].values():
        params.pop("student_fst_hinge")
    (parts[0] / "defense.json").write_text(json.dumps(older))
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "same")]) == 0
    markdown, merged = _read(tmp_path / "same")
    assert merged["settings"]["params"]["argd"]["student_fst_hinge"] is False
    assert not any("clean_model" in row for row in merged["attacks"].values())
    assert "Clean model (no backdoor): ACC 90.56 %." in markdown


BAD_ARGUMENTS = [
    (["--attacks", "badnets,nosuch"], "nosuch"),
    (["--ablations", "bogus"], "bogus"),
    (["--defenses", "argd,magic"], "magic"),
    (["--set", "lr=-1"], "lr"),
    (["--attack-set", "sig.delta=-3"], "delta"),
    (["--attack-set", "sigdelta=3"], "ATTACK.KEY=VALUE"),
    (["--attack-set", "nosuch.x=1"], "nosuch"),
    (["--attack-set", "sig.colour=1"], "colour"),
    (["--attack-set", "cl.rate=1.5"], "rate"),
    (["--attack-set", "nosuch@0.01.size=5"], "nosuch"),
    (["--attack-set", "badnets@0.01.rate=0.05"], "number after its '@'"),
    (["--attacks", "badnets@0.01", "--attack-set", "badnets@0.01.colour=1"], "colour"),
    (["--attacks", "badnets@1.5"], "poisoning rate must be in (0, 1]"),
    (["--attacks", "badnets@many"], "must be a number"),
    (["--seed-defenses", "argd,magic"], "magic"),
]


def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, named in BAD_ARGUMENTS:
        assert main(["defense", *argv, "--out", str(tmp_path)]) == 2, argv
        assert named in capsys.readouterr().err, argv
    assert main(["defense", "--test-npz", str(tmp_path / "t.npz")]) == 2
    assert "--train-npz" in capsys.readouterr().err
    assert not (tmp_path / "defense.json").exists()


def test_a_row_setting_goes_on_top_of_its_attacks_and_only_for_that_row() -> None:
    config = DefenseConfig()
    assert attack_kwargs(config, "badnets@0.01") == {"size": 6}
    assert attack_kwargs(config, "badnets") == {}
    overrides = ["badnets.margin=2", "badnets@0.01.size=5", "cl@0.05.eps=0.1"]
    config.attack_settings = parse_attack_settings(overrides)
    assert attack_kwargs(config, "badnets@0.01") == {"margin": 2, "size": 5}
    assert attack_kwargs(config, "badnets") == {"margin": 2}
    assert attack_kwargs(config, "cl@0.05")["eps"] == 0.1 and attack_kwargs(config, "cl")["eps"] == 32 / 255
    # The '@' rate is the row's rate; the attack's own rate setting does not override it.
    assert attack_rate(config, "cl@0.05") == 0.05 and attack_rate(config, "cl") == 0.08


def test_every_tune_grid_entry_is_valid_and_sets_what_it_says() -> None:
    for name, (description, overrides) in GRID.items():
        assert description, name
        params = defense_params(DefenseConfig(overrides=overrides), "argd", levels=3)
        for key, value in overrides.items():
            if not key.endswith("_scale") and key != "beta_uniform":
                assert getattr(params, key) == value, (name, key)
    # The student-SAM entries set the student's own radius, so they mean the same under any default of
    # sam_rho or student_sam_rho, and leave FT-SAM at its published rho 2.
    for name in ("student-sam", "student-sam-rho-0.5", "student-sam-rho-1"):
        overrides = GRID[name][1]
        assert "sam_rho" not in overrides and overrides["student_sam"] is True, name
        assert defense_params(DefenseConfig(overrides=overrides), "ft-sam").recipe("distill").sam_rho == 2.0


def test_clean_subset_avoids_poisoned_images() -> None:
    data = ImageData(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), torch.arange(50) % 5)
    excluded = torch.arange(0, 50, 2)
    subset_index = clean_subset(ImageData(data.x, torch.arange(50)), excluded, 20, seed=3).y
    assert len(subset_index) == 20 and not set(subset_index.tolist()) & set(excluded.tolist())
    with pytest.raises(Exception, match="only 25 untouched"):
        clean_subset(data, excluded, 26, seed=3)


def test_ablation_overrides_apply_to_argd_params() -> None:
    config = DefenseConfig(epochs=4, teacher_epochs=2)
    base = defense_params(config, "argd", levels=3)
    half = defense_params(config, "argd", levels=3, **ABLATIONS["node-x0.5"][1])
    frozen = defense_params(config, "argd", levels=3, **ABLATIONS["frozen-embedding"][1])
    assert half.w_node == pytest.approx(base.w_node / 2)
    assert frozen.embedding_trainable is False and base.embedding_trainable is True
    assert base.epochs == 4 and base.teacher_epochs == 2
    ft = defense_params(config, "finetune", levels=3)
    assert set(ft.effective_weights().values()) == {0.0}
    assert (ft.lr, ft.lr_schedule, ft.epochs) == (base.lr, base.lr_schedule, base.epochs)


def test_runs_share_a_teacher_only_when_its_recipe_and_schedule_agree() -> None:
    base = CleanseParams()
    # sam_rho and the student's pieces do not touch an FST teacher; its own SAM radius does.
    assert teacher_key(base) == teacher_key(base.model_copy(update={"sam_rho": 0.5, "student_sam": True}))
    assert teacher_key(base) == teacher_key(base.model_copy(update={"lr": 0.02, "w_edge": 1.0}))
    fst_sam = base.model_copy(update={"teacher": "fst-sam"})
    assert teacher_key(base) != teacher_key(fst_sam)
    assert teacher_key(fst_sam) != teacher_key(fst_sam.model_copy(update={"sam_rho": 0.5}))
    assert teacher_key(base) != teacher_key(base.model_copy(update={"teacher_epochs": 20}))


def test_speed_quick_reports_every_method(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    args = ["speed", "--quick", "--images", "128", "--repeats", "1", "--out", str(out)]
    if not HAVE_FMNIST:
        path = tmp_path / "train.npz"
        save_npz(_synthetic(200, 5), path)
        args += ["--train-npz", str(path)]
    assert main(args) == 0
    results = json.loads((out / "speed.json").read_text())
    assert list(results["methods"]) == ["bare", "finetune", "nad", "argd"]
    for row in results["methods"].values():
        assert row["seconds_per_epoch"] > 0 and row["images_per_second"] > 0
        assert len(row["epoch_seconds"]) == 1
    assert results["methods"]["bare"]["ratio_to_bare"] == pytest.approx(1.0)
    markdown = (out / "speed.md").read_text()
    assert "bare passes" in markdown and "| ARGD |" in markdown
