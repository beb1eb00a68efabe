"""One trainer for both phases of a job: teacher fine-tuning (cross-entropy only) and student distillation.

Distillation adds `ARGLoss` (node, edge and embedding terms) against a frozen teacher; ARGD, NAD and plain
fine-tuning differ only in the term weights (`CleanseParams.effective_weights`). The loop is built for small
clean subsets on a GPU:
- the data sit on the device as uint8 tensors; a batch is an index slice of a permutation drawn from a seeded
  device generator and is augmented there, in batch (no per-image Python, no DataLoader workers);
- the teacher runs in eval mode under `no_grad`; both networks' attention levels are read with `FeatureTap`;
- mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler), optional channels_last;
- losses are accumulated on the device and synced with the host at most about once a second (for progress)
  and once per epoch (for the history), never once per batch.

Resumability: the learning rate is a pure function of (epoch, position in epoch), so the "scheduler state" is
the epoch counter. `state_dict()` holds the model, the loss module (embedding), the optimiser, the grad
scaler, the device generator and the global RNG states, the history and the best-so-far model; a trainer
restored from it after epoch k continues exactly as the uninterrupted run would have, bit for bit on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from argd.core.augment import Augmenter, Normalizer
from argd.core.checkpoint import cpu_state
from argd.core.data import ImageData
from argd.core.device import amp_dtype, autocast, make_grad_scaler, seeded_generator
from argd.core.errors import ArgdError, Cancelled, InvalidInput
from argd.core.features import FeatureTap, default_node_weights, resolve_feature_layers
from argd.core.losses import ARGLoss, EmbeddingLoss
from argd.core.metrics import predict
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec

Phase = Literal["teacher", "distill"]
LOSS_NAMES = ("ce", "node", "edge", "emb", "total")
#: Seconds between host syncs of the running losses for per-batch progress events.
PROGRESS_SYNC_SECONDS = 1.0
_PHASE_SEED_OFFSET = {"teacher": 1, "distill": 2}


@dataclass
class ProgressEvent:
    """One progress report: after every batch (cheap) and at the end of every epoch (with metrics).

    `epoch` and `batch` count from 1. Per-batch `losses` are running means of the current epoch, refreshed at
    most about once a second (empty before the first refresh); at the end of an epoch they are the epoch's
    means and `metrics` holds what was measured then (e.g. `val_acc`), otherwise `metrics` is None.
    """

    phase: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    end_of_epoch: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


def level_shapes(
    model: nn.Module, layers: list[str], spec: ModelSpec, device: torch.device
) -> list[tuple[int, int]]:
    """(H, W) of each tapped level, from one dummy forward in eval mode (batch-norm statistics untouched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, layers) as tap:
            model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size, device=device))
            return [(int(f.shape[-2]), int(f.shape[-1])) for f in tap.features]
    finally:
        model.train(was_training)


class Trainer:
    """Trains `model` in place for one phase; see the module docstring.

    `train` and `val` must already be on `device`. For phase "distill" with any non-zero term weight a
    `teacher` is required; it is put in eval mode with gradients off. `feature_layers` default to
    `resolve_feature_layers(model, spec)`, `teacher_feature_layers` to the same names, `beta` to
    `params.beta` or the architecture's default node weights.
    """

    def __init__(
        self,
        model: nn.Module,
        train: ImageData,
        spec: ModelSpec,
        params: CleanseParams,
        *,
        phase: Phase,
        device: torch.device,
        teacher: nn.Module | None = None,
        feature_layers: list[str] | None = None,
        teacher_feature_layers: list[str] | None = None,
        teacher_spec: ModelSpec | None = None,
        val: ImageData | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_epoch_end: Callable[[Trainer], None] | None = None,
    ) -> None:
        if phase not in ("teacher", "distill"):
            raise ValueError(f"unknown phase {phase!r}")
        if len(train) < 2:
            raise InvalidInput(f"training needs at least 2 clean images, got {len(train)}")
        self.model, self.train_data, self.spec, self.params = model, train, spec, params
        self.phase, self.device, self.val = phase, device, val
        self.progress, self.should_cancel, self.on_epoch_end = progress, should_cancel, on_epoch_end
        self.epochs = params.teacher_epochs if phase == "teacher" else params.epochs
        self.batch_size = min(params.batch_size, len(train))
        self.batches = len(train) // self.batch_size + (1 if len(train) % self.batch_size >= 2 else 0)

        padding, cutout_size = params.augmentation_sizes(spec.image_size)
        self.augment = Augmenter(
            Normalizer.for_spec(spec, device), padding, params.flip, cutout_size, params.channels_last
        )
        self.amp_dtype = amp_dtype(device, params.amp)
        self.scaler = make_grad_scaler(device, self.amp_dtype)
        self.generator = seeded_generator(device, params.seed * 10 + _PHASE_SEED_OFFSET[phase])

        weights = params.effective_weights() if phase == "distill" else {"node": 0.0, "edge": 0.0, "emb": 0.0}
        self.teacher: nn.Module | None = None
        self.loss_fn: ARGLoss | None = None
        self.layers: list[str] = []
        self.teacher_layers: list[str] = []
        if any(w > 0 for w in weights.values()):
            if teacher is None:
                raise ValueError(f"method {params.method!r} distils from a teacher, but none was given")
            self.teacher = teacher.eval().requires_grad_(False)
            self.loss_fn = self._build_loss(weights, feature_layers, teacher_feature_layers, teacher_spec)

        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.loss_fn is not None:
            trainable += [p for p in self.loss_fn.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            trainable,
            lr=self._lr(0, 0.0),
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=params.weight_decay,
        )
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "val_acc", "model"} when selecting by validation

    # ------------------------------------------------------------------ construction helpers
    def _build_loss(
        self,
        weights: dict[str, float],
        feature_layers: list[str] | None,
        teacher_feature_layers: list[str] | None,
        teacher_spec: ModelSpec | None,
    ) -> ARGLoss:
        assert self.teacher is not None
        params = self.params
        self.layers = list(feature_layers or resolve_feature_layers(self.model, self.spec))
        t_spec = teacher_spec or self.spec
        if teacher_feature_layers:
            self.teacher_layers = list(teacher_feature_layers)
        elif teacher_spec is not None:
            self.teacher_layers = resolve_feature_layers(self.teacher, t_spec)
        else:
            self.teacher_layers = list(self.layers)
        s_shapes = level_shapes(self.model, self.layers, self.spec, self.device)
        t_shapes = level_shapes(self.teacher, self.teacher_layers, t_spec, self.device)
        if (weights["node"] > 0 or weights["edge"] > 0) and len(s_shapes) != len(t_shapes):
            raise InvalidInput(
                f"student has {len(s_shapes)} attention levels and teacher {len(t_shapes)}: the node and "
                "edge losses need the same number of levels",
                details={"student_layers": self.layers, "teacher_layers": self.teacher_layers},
            )
        if weights["node"] > 0 and s_shapes != t_shapes:
            raise InvalidInput(
                f"student level resolutions {s_shapes} differ from the teacher's {t_shapes}: the node loss "
                "compares maps of the same resolution",
                details={"student": s_shapes, "teacher": t_shapes},
            )
        beta = (
            list(params.beta) if params.beta is not None else default_node_weights(self.spec, len(s_shapes))
        )
        if len(beta) != len(s_shapes):
            raise InvalidInput(
                f"beta has {len(beta)} node weights but the model has {len(s_shapes)} attention levels "
                f"({', '.join(self.layers)})",
                details={"beta": beta, "feature_layers": self.layers},
            )
        embedding = None
        if weights["emb"] > 0:
            embedding = EmbeddingLoss(
                s_shapes,
                t_shapes,
                dim=params.embedding_dim,
                trainable=params.embedding_trainable,
                seed=params.seed,
            ).to(self.device)
        return ARGLoss(
            beta,
            w_node=weights["node"],
            w_edge=weights["edge"],
            w_emb=weights["emb"],
            p=params.attention_p,
            embedding=embedding,
        )

    def _lr(self, epoch: int, progress: float) -> float:
        if self.phase == "teacher":
            return self.params.teacher_lr_at(epoch, progress)
        return self.params.lr_at(epoch, progress)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed epoch (CPU tensors, weights_only-safe)."""
        state: dict[str, Any] = {
            "phase": self.phase,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "model": cpu_state(self.model),
            "loss_fn": cpu_state(self.loss_fn) if self.loss_fn is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "device_type": self.device.type,
            "generator": self.generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": [dict(h) for h in self.history],
            "best": self.best,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken after some epoch of the same phase and settings."""
        if state.get("phase") != self.phase or state.get("epochs") != self.epochs:
            raise ArgdError(
                f"checkpoint is for phase {state.get('phase')!r} with {state.get('epochs')} epochs, "
                f"not {self.phase!r} with {self.epochs}",
                code="bad_checkpoint",
            )
        self.model.load_state_dict(state["model"])
        if self.loss_fn is not None and state.get("loss_fn") is not None:
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["cpu_rng"])
        if state.get("device_type") == self.device.type:
            self.generator.set_state(state["generator"])
            if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        else:
            # A job resumed on another kind of device (e.g. GPU checkpoint, CPU worker): the generator states
            # are not interchangeable, so continue with a fresh, still deterministic, stream.
            self.generator.manual_seed(
                self.params.seed * 10 + _PHASE_SEED_OFFSET[self.phase] + 1000 * self.epoch
            )
        self.history = [dict(h) for h in state["history"]]
        self.best = state.get("best")

    # ------------------------------------------------------------------ training
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns the history. With selection "validation" the model ends with the
        weights of its best validation epoch."""
        self.model.train()
        student_tap = FeatureTap(self.model, self.layers) if self.loss_fn is not None else None
        teacher_tap = FeatureTap(self.teacher, self.teacher_layers) if self.loss_fn is not None else None
        try:
            if student_tap is not None and teacher_tap is not None:
                student_tap.__enter__()
                teacher_tap.__enter__()
            while self.epoch < self.epochs:
                self._run_epoch(student_tap, teacher_tap)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self)
        finally:
            if student_tap is not None and teacher_tap is not None:
                student_tap.remove()
                teacher_tap.remove()
        if self.params.selection == "validation" and self.best is not None:
            self.model.load_state_dict(self.best["model"])
        return self.history

    def _run_epoch(self, student_tap: FeatureTap | None, teacher_tap: FeatureTap | None) -> None:
        epoch, started = self.epoch, time.perf_counter()
        x_all, y_all = self.train_data.x, self.train_data.y
        order = torch.randperm(len(self.train_data), generator=self.generator, device=self.device)
        sums = torch.zeros(len(LOSS_NAMES), device=self.device)
        running: dict[str, float] = {}
        last_sync = time.monotonic()
        for batch in range(self.batches):
            if self.should_cancel is not None and self.should_cancel():
                raise Cancelled(f"cancelled during {self.phase} epoch {epoch + 1}, before batch {batch + 1}")
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(epoch, batch / self.batches)
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            x = self.augment(x_all[index], self.generator)
            losses = self._step(x, y_all[index], student_tap, teacher_tap)
            sums += losses
            if self.progress is not None:
                now = time.monotonic()
                if now - last_sync >= PROGRESS_SYNC_SECONDS:
                    running = dict(zip(LOSS_NAMES, (sums / (batch + 1)).tolist(), strict=True))
                    last_sync = now
                self.progress(
                    ProgressEvent(self.phase, epoch + 1, self.epochs, batch + 1, self.batches, dict(running))
                )
        means = dict(zip(LOSS_NAMES, (sums / self.batches).tolist(), strict=True))
        if not all(math.isfinite(v) for v in means.values()):
            raise ArgdError(
                f"{self.phase} training diverged in epoch {epoch + 1} (losses {means}); lower the learning "
                "rate or the distillation weights",
                code="diverged",
                details={"phase": self.phase, "epoch": epoch + 1},
            )
        record: dict[str, Any] = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "losses": means,
            "lr": self._lr(epoch, 0.0),
        }
        metrics: dict[str, Any] = {}
        if self.val is not None and len(self.val) > 0:
            predictions = predict(
                self.model,
                self.val,
                self.spec,
                self.device,
                self.params.eval_batch_size,
                channels_last=self.params.channels_last,
            )
            val_acc = float((predictions == self.val.y.cpu()).float().mean())
            record["val_acc"] = metrics["val_acc"] = val_acc
            if self.params.selection == "validation" and (
                self.best is None or val_acc > self.best["val_acc"]
            ):
                self.best = {"epoch": epoch + 1, "val_acc": val_acc, "model": cpu_state(self.model)}
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch = epoch + 1
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    self.phase,
                    epoch + 1,
                    self.epochs,
                    self.batches,
                    self.batches,
                    means,
                    metrics,
                    end_of_epoch=True,
                )
            )

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, student_tap: FeatureTap | None, teacher_tap: FeatureTap | None
    ) -> torch.Tensor:
        """One optimisation step; returns the detached [ce, node, edge, emb, total] on the device."""
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            ce = F.cross_entropy(logits.float(), y)
            if self.loss_fn is not None:
                assert self.teacher is not None and student_tap is not None and teacher_tap is not None
                with torch.no_grad():
                    self.teacher(x)
                terms = self.loss_fn(student_tap.features, teacher_tap.features)
                loss = ce + terms["total"]
                values = torch.stack([ce, terms["node"], terms["edge"], terms["emb"], loss])
            else:
                loss = ce
                values = torch.stack([ce, ce.new_zeros(()), ce.new_zeros(()), ce.new_zeros(()), loss])
        self._optimise(loss)
        if student_tap is not None and teacher_tap is not None:
            student_tap.clear()
            teacher_tap.clear()
        return values.detach()

    def _optimise(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` and take one optimiser step (through the AMP grad scaler when there is one),
        leaving the gradients cleared for the next batch."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
