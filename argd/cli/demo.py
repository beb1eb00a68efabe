"""`argd demo`: the whole service on one machine, end to end, in a few minutes on two CPU cores.

1. Data: Fashion-MNIST from the Debian package when installed, else synthetic images (said so).
2. A backdoored WRN-16-1 (BadNets, all-to-one, about 90 % clean accuracy). The project ships the one its
   own code made (`argd/cli/assets/`), and `argd demo --remake-model PATH` makes it again; any other
   setting trains a model once and caches it under the data directory, keyed by every setting that shapes
   it. Synthetic data get a small CNN, which trains in a minute or two.
3. The embedded service (`argd serve`: SQLite, folder queue, one worker) on a free local port, with a
   fresh data directory and an API key made for the run.
4. Upload model and data through the REST API, run ARGD at its defaults and the strongest baseline (FST),
   follow them with a progress bar, download the cleansed model, check it locally, and print the
   before/after table.

The helpers that build data and backdoored models are also what the command-line tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argd.cli.argtypes import positive_int
from argd.cli.common import EXIT_FAILURE, EXIT_OK, ArgumentParser, CliError, info, percent
from argd.cli.progress import PhaseBar, bar_enabled, engine_progress

if TYPE_CHECKING:  # the engine is imported when a command runs, so `argd --help` stays quick
    from argd.core.data import ImageData
    from argd.core.spec import ModelSpec

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DemoConfig:
    """Every setting that shapes the demo's data and backdoored model (the cache key is built from it)."""

    source: str = "auto"  # auto | fashion-mnist | synthetic
    architecture: str = "wrn-16-1"
    image_size: int = 28
    num_classes: int = 10
    train_size: int = 20000
    test_size: int = 2000
    clean_size: int = 3000
    target: int = 0
    poison_rate: float = 0.1
    backdoor_epochs: int = 12
    backdoor_lr: float = 0.05
    #: Random-crop padding (pixels) while training the backdoored model (None: the engine's default,
    #: 4 px at 32 px scaled to the image) and horizontal flips: augmented, as ARGD.md asks.
    backdoor_crop: int | None = None
    backdoor_flip: bool = True
    seed: int = 0

    def cache_key(self, source: str) -> str:
        """Names the cached backdoored model: any change of a setting (or of the data source) retrains."""
        from argd import __version__

        payload = json.dumps({**asdict(self), "source": source, "argd": __version__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: The small settings for synthetic images: a 24k-parameter CNN that learns them in a minute or two.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "architecture": "small-cnn",
    "train_size": 10000,
    "clean_size": 1000,
    "backdoor_crop": 2,
    "backdoor_flip": False,
}
#: The backdoored model the project ships, made by `argd demo --remake-model` at the default settings.
SHIPPED_MODEL = Path(__file__).parent / "assets" / "demo-wrn-16-1-badnets.safetensors"
#: The baseline the demo runs beside ARGD: the strongest one in the defense benchmark.
BASELINE = "fst"


@dataclass
class DemoInputs:
    """What the demo uploads and checks against: the data, the attack's test set and the model file."""

    source: str
    spec: ModelSpec
    model_path: Path
    train: ImageData
    test: ImageData
    clean: ImageData
    poisoned_test: ImageData
    target: int


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add `argd demo` to the command tree."""
    p = commands.add_parser(
        "demo",
        help="end-to-end demonstration: backdoored model in, cleansed model out, through the REST API",
        description="Start the embedded service, cleanse a backdoored WRN-16-1 (shipped with the project, "
        "or trained and cached for other settings) through the REST API with ARGD and with the strongest "
        "baseline, and print ACC/ASR before and after.",
    )
    p.add_argument(
        "--data-dir", type=Path, help="cache folder for data and models (default: ARGD_DATA_DIR/demo)"
    )
    p.add_argument(
        "--out", type=Path, help="where to save the cleansed model and report (default: DATA_DIR/output)"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="use synthetic images (and a small CNN) even if Fashion-MNIST is installed",
    )
    p.add_argument(
        "--architecture", help="network of the backdoored model (default: wrn-16-1; small-cnn when synthetic)"
    )
    p.add_argument("--train-size", type=positive_int, help="default: 20000 (synthetic: 10000)")
    p.add_argument(
        "--clean-size", type=positive_int, help="clean subset uploaded (default: 3000; synthetic: 1000)"
    )
    p.add_argument("--test-size", type=positive_int, help=f"default: {DemoConfig.test_size}")
    p.add_argument("--backdoor-epochs", type=positive_int, help=f"default: {DemoConfig.backdoor_epochs}")
    p.add_argument("--epochs", type=positive_int, help="student epochs (default: the service's default)")
    p.add_argument(
        "--teacher-epochs", type=positive_int, help="teacher epochs (default: the service's default)"
    )
    p.add_argument(
        "--baseline",
        default=BASELINE,
        choices=["fst", "ft-sam", "finetune", "nad"],
        help="the baseline job beside ARGD (default: %(default)s, the strongest in the benchmark)",
    )
    p.add_argument("--no-baseline", action="store_true", help="run the ARGD job alone")
    p.add_argument(
        "--remake-model",
        type=Path,
        metavar="PATH",
        help="train the backdoored model of these settings, write it to PATH and stop (no service); "
        "the shipped one is `argd demo --remake-model argd/cli/assets/demo-wrn-16-1-badnets.safetensors`",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="service port (default: a free one)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The settings of this run: the WRN-16-1 defaults on Fashion-MNIST, the small ones on synthetic data,
    then whatever the flags say."""
    synthetic = args.synthetic or not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
    base = {**asdict(DemoConfig()), **(SYNTHETIC_DEFAULTS if synthetic else {})}
    chosen = {
        "architecture": args.architecture,
        "train_size": args.train_size,
        "clean_size": args.clean_size,
        "test_size": args.test_size,
        "backdoor_epochs": args.backdoor_epochs,
        "seed": args.seed,
    }
    base.update({k: v for k, v in chosen.items() if v is not None})
    base["source"] = "synthetic" if args.synthetic else "auto"
    config = DemoConfig(**base)
    if config.clean_size > config.train_size:
        raise CliError("--clean-size cannot exceed --train-size")
    return config


# ---------------------------------------------------------------------------------------------------- data


def synthetic_images(
    count: int, *, num_classes: int = 10, image_size: int = 28, channels: int = 1, seed: int = 0
) -> Any:
    """A labelled uint8 image set that a small CNN learns in a few epochs, for runs without Fashion-MNIST.

    Class `k` is one of five periodic textures (horizontal stripes, vertical stripes, a grid, a diagonal
    cross-hatch, rings) at one of two wavelengths, drawn with a random phase (or ring centre), contrast and
    pixel noise. Every texture looks the same mirrored and shifted, so the default training augmentation
    (random crop, horizontal flip) keeps each image in its class. Values stay inside [20, 220] so that a
    black-and-white trigger stands apart from content. Equal seeds give equal sets; the classes are the
    same for every seed (draw train and test sets with different seeds).
    """
    import math

    import torch

    from argd.core.data import ImageData

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (count,), generator=gen)
    texture = (y % 5)[:, None, None]
    wavelength = (torch.where((y // 5) % 2 == 0, 7.0, 3.5) * image_size / 28)[:, None, None]
    phase = (2 * math.pi * torch.rand(count, generator=gen))[:, None, None]
    centre = (image_size * torch.rand(count, 2, generator=gen))[:, :, None, None]
    contrast = (0.6 + 0.4 * torch.rand(count, generator=gen))[:, None, None]
    coords = torch.arange(image_size, dtype=torch.float32)
    rows, cols = (c[None] for c in torch.meshgrid(coords, coords, indexing="ij"))

    def wave(along: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * math.pi * along / wavelength + phase)

    diagonal = (wave((rows + cols) / math.sqrt(2)) + wave((rows - cols) / math.sqrt(2))) / 2
    radius = ((rows - centre[:, 0]) ** 2 + (cols - centre[:, 1]) ** 2).sqrt()
    patterns = torch.stack([wave(rows), wave(cols), (wave(rows) + wave(cols)) / 2, diagonal, wave(radius)])
    chosen = patterns.gather(0, texture[None].expand(1, count, image_size, image_size))[0]
    images = 0.5 + 0.5 * contrast * chosen
    images = images[:, None].expand(count, channels, image_size, image_size)
    images = images + 0.1 * torch.randn(images.shape, generator=gen)
    x = (20 + 200 * images.clamp(0, 1)).round().to(torch.uint8)
    return ImageData(x, y)


def demo_data(config: DemoConfig) -> tuple[str, Any, Any]:
    """(source name, train, test): Fashion-MNIST subsets when available (and wanted), else synthetic."""
    import torch

    wanted = config.source
    if wanted in ("auto", "fashion-mnist"):
        train_test = _fashion_mnist()
        if train_test is not None:
            train, test = train_test
            gen = torch.Generator().manual_seed(config.seed)
            train = train.subset(torch.randperm(len(train), generator=gen)[: config.train_size])
            test = test.subset(torch.randperm(len(test), generator=gen)[: config.test_size])
            return "fashion-mnist", train, test
        if wanted == "fashion-mnist":
            raise CliError(
                f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} "
                "(apt-get install dataset-fashion-mnist)"
            )
    kwargs = {"num_classes": config.num_classes, "image_size": config.image_size}
    train = synthetic_images(config.train_size, seed=config.seed, **kwargs)
    test = synthetic_images(config.test_size, seed=config.seed + 1, **kwargs)
    return "synthetic", train, test


def _fashion_mnist() -> tuple[Any, Any] | None:
    """The engine's Fashion-MNIST loader, or None when the package's files are missing."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return None
    from argd.core.data import load_fashion_mnist

    return load_fashion_mnist(FASHION_MNIST_DIR, "train"), load_fashion_mnist(FASHION_MNIST_DIR, "test")


def demo_spec(config: DemoConfig) -> Any:
    """The model spec of the demo's network (grey images, per-dataset normalisation)."""
    from argd.core.spec import ModelSpec

    return ModelSpec(
        architecture=config.architecture,
        num_classes=config.num_classes,
        in_channels=1,
        image_size=config.image_size,
        mean=[0.5],
        std=[0.25],
    )


def train_backdoored(
    config: DemoConfig,
    spec: Any,
    poisoned_train: Any,
    device: str = "cpu",
    progress: Callable[[Any], None] | None = None,
) -> Any:
    """Train a fresh network on the poisoned set, with crop augmentation, by the engine's own trainer.

    The teacher phase of `Trainer` is plain cross-entropy training, which is all a backdoored model needs;
    `progress` receives its events relabelled as phase "backdoor".
    """
    import torch

    from argd.core.architectures import build_model
    from argd.core.data import ImageData
    from argd.core.device import resolve_device
    from argd.core.params import CleanseParams
    from argd.core.trainer import Trainer

    run_device = resolve_device(device)
    torch.manual_seed(config.seed)
    model = build_model(spec).to(run_device)
    params = CleanseParams(
        seed=config.seed,
        teacher="finetune",
        batch_size=128,
        teacher_epochs=config.backdoor_epochs,
        teacher_lr=config.backdoor_lr,
        teacher_lr_schedule="cosine",
        weight_decay=5e-4,
        flip=config.backdoor_flip,
        cutout=0,
        crop_padding=config.backdoor_crop,
    )
    data = ImageData(poisoned_train.x.to(run_device), poisoned_train.y.to(run_device))
    relabel = None if progress is None else (lambda event: progress(replace(event, phase="backdoor")))
    Trainer(model, data, spec, params, phase="teacher", device=run_device, progress=relabel).fit()
    return model.to("cpu").eval()


def demo_inputs(config: DemoConfig, cache_dir: Path, quiet: bool = False) -> DemoInputs:
    """Data, attack and a backdoored model: the shipped one or the cached one when their settings match,
    else trained now (and cached)."""
    source, train, test = demo_data(config)
    if source == "synthetic" and config.source == "synthetic":
        info("argd demo: using synthetic images (--synthetic)", quiet)
    elif source == "synthetic":
        info(
            f"argd demo: Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (Debian package "
            "dataset-fashion-mnist): using synthetic images instead",
            quiet=False,
        )
    spec = demo_spec(config)
    poisoned_set, poisoned_test, clean = _attack(config, train, test)
    model_path = cache_dir / f"backdoored-{config.architecture}-{config.cache_key(source)}.safetensors"
    if _shipped_matches(config, source):
        model_path = SHIPPED_MODEL
        info(
            f"argd demo: using the backdoored {config.architecture} shipped with argd ({SHIPPED_MODEL.name})",
            quiet,
        )
    elif model_path.is_file():
        info(f"argd demo: reusing the cached backdoored model {model_path}", quiet)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        info(
            f"argd demo: training a backdoored {config.architecture} on {len(train)} {source} images "
            f"({len(poisoned_set.poisoned_index)} poisoned, target {config.target}, "
            f"{config.backdoor_epochs} epochs); cached for next time",
            quiet,
        )
        make_model(config, source, poisoned_set.data, model_path, quiet)
    return DemoInputs(source, spec, model_path, train, test, clean, poisoned_test, config.target)


def _attack(config: DemoConfig, train: ImageData, test: ImageData) -> tuple[Any, ImageData, ImageData]:
    """(poisoned training set, triggered test set, clean subset): BadNets with the demo's settings, and a
    clean subset drawn from the training images it did NOT poison (what a defender would hold)."""
    import torch

    from argd.core.attacks import make_attack

    attack = make_attack("badnets", target=config.target, rate=config.poison_rate, seed=config.seed)
    poisoned_set = attack.poison_train(train)
    untouched = torch.ones(len(train), dtype=torch.bool)
    untouched[poisoned_set.poisoned_index] = False
    candidates = torch.nonzero(untouched).flatten()
    gen = torch.Generator().manual_seed(config.seed + 7)
    clean = train.subset(candidates[torch.randperm(candidates.numel(), generator=gen)[: config.clean_size]])
    return poisoned_set, attack.poison_eval(test), clean


def make_model(config: DemoConfig, source: str, poisoned_train: ImageData, path: Path, quiet: bool) -> None:
    """Train the backdoored model and save it to `path`, its settings in the file's metadata."""
    from argd.core.weights import save_weights

    started = time.perf_counter()
    with PhaseBar(bar_enabled(quiet)) as bar:
        model = train_backdoored(config, demo_spec(config), poisoned_train, progress=engine_progress(bar))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, metadata={"demo_config": json.dumps(asdict(config)), "source": source})
    info(f"argd demo: trained in {time.perf_counter() - started:.0f}s", quiet)


def _shipped_matches(config: DemoConfig, source: str) -> bool:
    """Whether the shipped model was made with exactly these settings on this data."""
    if source != "fashion-mnist" or not SHIPPED_MODEL.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(SHIPPED_MODEL), framework="pt") as f:
        metadata = f.metadata() or {}
    try:
        made_with = json.loads(metadata.get("demo_config", "null"))
    except json.JSONDecodeError:
        return False
    return metadata.get("source") == source and made_with == {
        **asdict(config),
        "source": made_with.get("source"),
    }


# ------------------------------------------------------------------------------------------------- service


class EmbeddedService:
    """`argd serve` as a child process on a private data directory, with an API key made for it."""

    def __init__(self, data_dir: Path, port: int = 0, *, extra_env: dict[str, str] | None = None):
        from argd.devserver import ARGD_SERVE, ServerProcess  # httpx: only when a service is started

        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.api_key = ""
        self.server = ServerProcess(
            self.environment(),
            data_dir / "serve.log",
            program=ARGD_SERVE,
            port=port,
            ready_path="/readyz",
            ready_timeout_s=SERVER_START_TIMEOUT_S,
        )

    @property
    def url(self) -> str:
        """The service's base URL (its port is known once started)."""
        return self.server.base_url

    def environment(self) -> dict[str, str]:
        """Embedded defaults whatever the caller's shell exports (no external database or broker)."""
        import os

        from argd.persistence.settings import Settings

        embedded = Settings(
            data_dir=self.data_dir, database_url="", broker_url="", broker_transport_options={}
        )
        fields = ["data_dir", "database_url", "broker_url", "broker_transport_options"]
        return {**os.environ, **embedded.to_env(fields), **self.extra_env}

    def start(self) -> EmbeddedService:
        """Migrate and make a key (short `argd` runs), then start `argd serve` and wait until it is ready."""
        from argd.devserver import ServerStartError

        self.data_dir.mkdir(parents=True, exist_ok=True)
        argd = [sys.executable, "-m", "argd.cli"]
        self._run([*argd, "migrate"])
        self.api_key = self._run([*argd, "keys", "create", "--tenant", "demo"]).strip().splitlines()[-1]
        try:
            self.server.start()
        except ServerStartError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
        return self

    def _run(self, command: list[str]) -> str:
        done = subprocess.run(
            command, env=self.server.env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise CliError(f"'{' '.join(command[2:])}' failed: {done.stderr.strip()[-500:]}", EXIT_FAILURE)
        return done.stdout

    def log_tail(self) -> str:
        return self.server.log_tail(3000) or "(no log)"

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------- command


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demonstration; exit 0 when every job succeeds."""
    from argd.cli.client_cmds import follow, save_result
    from argd.client import ArgdClient
    from argd.core.data import save_npz

    data_dir = args.data_dir or _default_data_dir()
    config = demo_config(args)
    started = time.perf_counter()
    if args.remake_model is not None:
        source, train, test = demo_data(config)
        poisoned_set, _, _ = _attack(config, train, test)
        info(
            f"argd demo: training the backdoored {config.architecture} on {len(train)} {source} images",
            args.quiet,
        )
        make_model(config, source, poisoned_set.data, args.remake_model, args.quiet)
        info(f"argd demo: wrote {args.remake_model}", args.quiet)
        return EXIT_OK
    inputs = demo_inputs(config, data_dir / "cache", args.quiet)
    out_dir = args.out or data_dir / "output"
    chosen = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "seed": args.seed}
    params = {name: value for name, value in chosen.items() if value is not None}

    with tempfile.TemporaryDirectory(prefix="argd-demo-") as tmp:
        tmp_dir = Path(tmp)
        files = {}
        for role in ("clean", "test", "poisoned_test"):
            files[role] = tmp_dir / f"{role}.npz"
            save_npz(getattr(inputs, role), files[role])
        info(f"argd demo: starting the embedded service (data in {tmp_dir / 'service'})", args.quiet)
        with EmbeddedService(tmp_dir / "service", args.port) as service:
            info(f"argd demo: service ready at {service.url}", args.quiet)
            with ArgdClient(service.url, service.api_key, timeout=120) as client:
                model = client.upload_model(inputs.model_path, inputs.spec, name="demo backdoored")
                clean = client.upload_dataset(files["clean"], name="clean subset")
                test = client.upload_dataset(files["test"], name="clean test")
                poisoned = client.upload_dataset(files["poisoned_test"], name="triggered test")
                info(
                    f"argd demo: uploaded the model ({model['parameters']} parameters) and "
                    f"{clean['count']} clean / {test['count']} test / {poisoned['count']} triggered images",
                    args.quiet,
                )
                common = {
                    "test_dataset_id": test["id"],
                    "poisoned_dataset_id": poisoned["id"],
                    "target_label": config.target,
                }
                methods = ["argd"] if args.no_baseline else ["argd", args.baseline]
                jobs = {
                    m: client.create_job(
                        model["id"], clean["id"], method=m, params={**params, "method": m}, **common
                    )
                    for m in methods
                }
                finished = {}
                for method, job in jobs.items():
                    info(f"argd demo: job {job['id']} ({method})", args.quiet)
                    finished[method] = follow(client, job["id"], args.quiet, None)
                failed = {m: j for m, j in finished.items() if j.get("status") != "succeeded"}
                if failed:
                    for method, job in failed.items():
                        error = job.get("error") or {}
                        info(f"argd demo: {method} job {job['status']}: {error.get('message', '')}")
                    info(service.log_tail())
                    return EXIT_FAILURE
                save_result(client, jobs["argd"]["id"], out_dir, with_report=True, quiet=args.quiet)

    check = _check_download(out_dir / "model.safetensors", inputs)
    print(results_table(inputs.source, config, finished, check))
    info(
        f"argd demo: done in {time.perf_counter() - started:.0f}s; cleansed model and report in {out_dir}",
        args.quiet,
    )
    return EXIT_OK


def _check_download(path: Path, inputs: DemoInputs) -> dict[str, Any]:
    """Evaluate the downloaded file here, so the table also shows what the user actually received."""
    from argd.core.metrics import evaluate
    from argd.core.weights import load_model

    model = load_model(path, inputs.spec)
    return dict(
        evaluate(
            model,
            inputs.spec,
            "cpu",
            test=inputs.test,
            poisoned=inputs.poisoned_test,
            target_label=inputs.target,
        )
    )


BASELINE_LABELS = {
    "fst": "FST (baseline)",
    "ft-sam": "FT-SAM (baseline)",
    "finetune": "fine-tuning (baseline)",
    "nad": "NAD (baseline)",
}


def results_table(
    source: str, config: DemoConfig, jobs: dict[str, dict[str, Any]], downloaded: dict[str, Any] | None = None
) -> str:
    """Before/after ACC and ASR of ARGD, with the baseline beside it and the wall time of each job."""
    argd_metrics = jobs["argd"].get("metrics") or {}
    rows: list[tuple[str, dict[str, Any], str]] = [
        ("backdoored model (before)", argd_metrics.get("before") or {}, "")
    ]
    for method, job in jobs.items():
        if method != "argd":
            rows.append(
                (
                    BASELINE_LABELS.get(method, method),
                    (job.get("metrics") or {}).get("after") or {},
                    _took(job),
                )
            )
    rows.append(("ARGD (cleansed)", argd_metrics.get("after") or {}, _took(jobs["argd"])))
    if downloaded is not None:
        rows.append(("ARGD, downloaded file", downloaded, ""))
    width = max(len(name) for name, _, _ in rows) + 2
    lines = [
        "",
        f"Backdoor removal on {source}: {config.architecture}, BadNets, target {config.target}; ACC on "
        "clean test images, ASR on triggered ones",
        f"{'':{width}}{'ACC':>9}{'ASR':>9}{'time':>8}",
    ]
    lines += [
        f"{name:{width}}{percent(m.get('acc')):>9}{percent(m.get('asr')):>9}{took:>8}".rstrip()
        for name, m, took in rows
    ]
    return "\n".join(lines)


def _took(job: dict[str, Any]) -> str:
    """The job's run time from its timestamps, e.g. '95 s' (blank when unknown)."""
    from datetime import datetime

    started, finished = job.get("started_at"), job.get("finished_at")
    if not started or not finished:
        return ""
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return f"{seconds:.0f} s"


def _default_data_dir() -> Path:
    """ARGD_DATA_DIR/demo (so `make clean` and .gitignore cover it), without importing the server stack."""
    import os

    return Path(os.environ.get("ARGD_DATA_DIR") or "argd-data").expanduser() / "demo"
