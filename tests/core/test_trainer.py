"""The trainer on a tiny CNN and tiny synthetic data: resume, cancel, progress, frozen teacher, selection."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from argd.core.architectures import build_model
from argd.core.checkpoint import load_checkpoint, save_checkpoint
from argd.core.data import ImageData
from argd.core.errors import ArgdError, Cancelled, InvalidInput
from argd.core.params import CleanseParams
from argd.core.trainer import ProgressEvent, Trainer
from tests.core.synthetic import bar_images, states_equal, tiny_spec

CPU = torch.device("cpu")
SPEC = tiny_spec(width=4)


@pytest.fixture(scope="module")
def data() -> ImageData:
    return bar_images(96, seed=0)


def fresh_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A student and a (different) teacher, both from fixed seeds."""
    torch.manual_seed(seed)
    student = build_model(SPEC)
    teacher = build_model(SPEC)
    return student, teacher


def params(**overrides: object) -> CleanseParams:
    base = {"epochs": 3, "batch_size": 32, "lr": 0.02, "w_node": 0.1, "w_edge": 10.0, "w_emb": 5.0}
    return CleanseParams.model_validate({**base, **overrides})


def test_resume_from_checkpoint_equals_uninterrupted_run(data: ImageData, tmp_path: Path) -> None:
    settings = params(embedding_trainable=True)
    student, teacher = fresh_pair()
    full = Trainer(student, data, SPEC, settings, phase="distill", device=CPU, teacher=teacher)
    full_history = full.fit()

    # Interrupted run: stop after epoch 1, keeping only the checkpoint file.
    student2, teacher2 = fresh_pair()
    path = tmp_path / "ckpt.pt"

    def stop_after_first(trainer: Trainer) -> None:
        save_checkpoint(path, trainer.state_dict())
        raise Cancelled("simulated worker death")

    first = Trainer(
        student2,
        data,
        SPEC,
        settings,
        phase="distill",
        device=CPU,
        teacher=teacher2,
        on_epoch_end=stop_after_first,
    )
    with pytest.raises(Cancelled):
        first.fit()

    # A new process: fresh modules, a disturbed global RNG, and the checkpoint read back weights_only.
    torch.manual_seed(12345)
    student3, teacher3 = fresh_pair()
    torch.manual_seed(999)
    resumed = Trainer(student3, data, SPEC, settings, phase="distill", device=CPU, teacher=teacher3)
    state = load_checkpoint(path)
    assert state is not None
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    resumed_history = resumed.fit()

    assert len(resumed_history) == len(full_history) == 3
    assert states_equal(student3.state_dict(), student.state_dict())
    assert full.attention is not None and resumed.attention is not None
    assert states_equal(resumed.attention.state_dict(), full.attention.state_dict())
    assert [h["losses"] for h in resumed_history] == [h["losses"] for h in full_history]


def test_cancel_raises_within_one_batch(data: ImageData) -> None:
    student, teacher = fresh_pair()
    seen: list[ProgressEvent] = []
    flag = {"cancel": False}

    def on_progress(event: ProgressEvent) -> None:
        seen.append(event)
        if event.batch == 2 and not event.end_of_epoch:
            flag["cancel"] = True

    trainer = Trainer(
        student,
        data,
        SPEC,
        params(batch_size=16),
        phase="distill",
        device=CPU,
        teacher=teacher,
        progress=on_progress,
        should_cancel=lambda: flag["cancel"],
    )
    with pytest.raises(Cancelled, match="before batch 3"):
        trainer.fit()
    assert [e.batch for e in seen] == [1, 2]
    assert trainer.epoch == 0 and trainer.history == []


def test_progress_events_arrive_in_order(data: ImageData) -> None:
    student, teacher = fresh_pair()
    events: list[ProgressEvent] = []
    trainer = Trainer(
        student,
        data,
        SPEC,
        params(epochs=2, batch_size=40),
        phase="distill",
        device=CPU,
        teacher=teacher,
        progress=events.append,
    )
    trainer.fit()
    # 96 images in batches of 40: 40, 40, 16 -> three batches per epoch, then the epoch-end event.
    assert [(e.epoch, e.batch, e.end_of_epoch) for e in events] == [
        (1, 1, False), (1, 2, False), (1, 3, False), (1, 3, True),
        (2, 1, False), (2, 2, False), (2, 3, False), (2, 3, True),
    ]  # fmt: skip
    assert all(e.phase == "distill" and e.epochs == 2 and e.batches == 3 for e in events)
    ends = [e for e in events if e.end_of_epoch]
    assert [e.losses for e in ends] == [h["losses"] for h in trainer.history]
    assert set(ends[0].losses) == {"ce", "node", "edge", "emb", "logit", "uploaded", "head", "total"}
    assert all(ends[0].losses[k] > 0 for k in ("ce", "node", "edge", "emb"))


def test_teacher_stays_frozen_and_embedding_trains_only_when_trainable(data: ImageData) -> None:
    for trainable in (True, False):
        student, teacher = fresh_pair()
        teacher_before = copy.deepcopy(teacher.state_dict())
        student_before = copy.deepcopy(student.state_dict())
        trainer = Trainer(
            student,
            data,
            SPEC,
            params(epochs=1, embedding_trainable=trainable),
            phase="distill",
            device=CPU,
            teacher=teacher,
        )
        assert trainer.attention is not None and trainer.attention.embedding is not None
        embedding_before = copy.deepcopy(trainer.attention.embedding.state_dict())
        trainer.fit()
        assert states_equal(teacher.state_dict(), teacher_before), "the teacher (incl. BN statistics) changed"
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert not states_equal(student.state_dict(), student_before)
        moved = [
            name
            for name, value in trainer.attention.embedding.named_parameters()
            if not torch.equal(value, embedding_before[name])
        ]
        assert bool(moved) == trainable, f"trainable={trainable} but moved parameters: {moved}"


def test_finetune_needs_no_teacher_and_distillation_does(data: ImageData) -> None:
    student, _ = fresh_pair()
    trainer = Trainer(student, data, SPEC, params(method="finetune", epochs=1), phase="distill", device=CPU)
    assert trainer.attention is None
    history = trainer.fit()
    assert history[0]["losses"]["node"] == 0.0 and history[0]["losses"]["total"] == history[0]["losses"]["ce"]
    with pytest.raises(ValueError, match="none was given"):
        Trainer(student, data, SPEC, params(method="nad"), phase="distill", device=CPU)


def test_teacher_phase_uses_the_teacher_schedule(data: ImageData) -> None:
    student, _ = fresh_pair()
    settings = params(teacher_epochs=2, teacher_lr=0.03, teacher_lr_schedule="constant")
    history = Trainer(student, data, SPEC, settings, phase="teacher", device=CPU).fit()
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["lr"] for h in history] == [0.03, 0.03]
    assert all(h["phase"] == "teacher" and h["losses"]["node"] == 0.0 for h in history)


def test_beta_must_match_the_levels(data: ImageData) -> None:
    student, teacher = fresh_pair()
    with pytest.raises(InvalidInput, match="beta has 2 node weights but the model has 3 attention levels"):
        Trainer(student, data, SPEC, params(beta=[1.0, 2.0]), phase="distill", device=CPU, teacher=teacher)


def test_validation_selection_keeps_the_best_epoch(data: ImageData) -> None:
    student, teacher = fresh_pair()
    val = bar_images(40, seed=5)
    settings = params(epochs=3, val_fraction=0.2, selection="validation")
    trainer = Trainer(student, data, SPEC, settings, phase="distill", device=CPU, teacher=teacher, val=val)
    history = trainer.fit()
    accuracies = [h["val_acc"] for h in history]
    assert trainer.best is not None
    assert trainer.best["epoch"] == accuracies.index(max(accuracies)) + 1
    assert states_equal(student.state_dict(), trainer.best["model"])


def test_non_finite_loss_is_reported(data: ImageData) -> None:
    student, _ = fresh_pair()
    with torch.no_grad():
        student.fc.bias.fill_(float("nan"))
    trainer = Trainer(student, data, SPEC, params(method="finetune", epochs=1), phase="distill", device=CPU)
    with pytest.raises(ArgdError, match="diverged") as caught:
        trainer.fit()
    assert caught.value.code == "diverged"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_cuda_mixed_precision_training(data: ImageData, amp: str) -> None:
    device = torch.device("cuda")
    student, teacher = fresh_pair()
    student = student.to(device).to(memory_format=torch.channels_last)
    teacher = teacher.to(device).to(memory_format=torch.channels_last)
    on_device = ImageData(data.x.to(device), data.y.to(device))
    settings = params(epochs=2, amp=amp, channels_last=True)
    trainer = Trainer(student, on_device, SPEC, settings, phase="distill", device=device, teacher=teacher)
    assert (trainer.scaler is not None) == (trainer.amp_dtype is torch.float16)
    history = trainer.fit()
    assert all(v == v for v in history[-1]["losses"].values())  # no NaN
    state = trainer.state_dict()
    assert state["device_type"] == "cuda" and state["cuda_rng"] is not None
