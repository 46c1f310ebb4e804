"""The GPU check behind ``scripts/gpu_check.sh``: runs dlforge on GPU and on CPU and prints one table.

``python scripts/gpu_check.py EPOCHS`` runs, each as its own ``dlforge`` command on ``configs/digits_cnn.yaml``:
train on CPU (the reference), on one GPU in 32, bf16-mixed (where the GPU has it) and 16-mixed, DDP over every GPU
when there are several, a 4-trial sweep with ``tune.resources_per_trial.gpu=0.5`` (and the same sweep on CPU), and
``dlforge compress`` of the GPU-trained teacher whose ONNX file is then timed with ONNX Runtime's CUDA provider
against its CPU provider when onnxruntime-gpu is installed. Columns: training throughput (examples/s over the
epochs after the first, validation included), median epoch time, peak GPU memory (``max_memory_allocated``), test
accuracy, wall time, and the speed-up over the same job on CPU.

``python scripts/gpu_check.py --probe OUT.json dlforge-args…`` is how each train command runs: ``dlforge`` itself
with a callback timing its epochs (DDP re-launches this same command line, so every rank writes its own file).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_cnn.yaml"
OUT = Path(os.environ.get("GPU_CHECK_DIR", "/tmp/dlforge-gpu-check"))


def probe(out: str, argv: list[str]) -> int:
    """``dlforge argv`` with an epoch timer added to the fit; rank 0's numbers go to ``out``."""
    sys.path.insert(0, str(ROOT))
    import lightning.pytorch as L
    import torch

    import pipelines.train
    from pipelines.cli import main

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.examples, self.started = 0, 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.examples += len(batch[0]) if len(self.epochs) else 0  # the first epoch is warm-up

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append(time.perf_counter() - self.started)

        def on_train_end(self, trainer, pl_module) -> None:
            steady = self.epochs[1:] or self.epochs
            facts = {
                "epoch_s": statistics.median(steady),
                "examples_per_s": self.examples * trainer.world_size / sum(steady) if len(self.epochs) > 1 else None,
                "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            }
            Path(f"{out}.rank{trainer.global_rank}").write_text(json.dumps(facts))

    original = pipelines.train.train

    def timed_train(cfg, *args, callbacks=(), **kwargs):
        return original(cfg, *args, callbacks=[*callbacks, Timer()], **kwargs)

    pipelines.train.train = timed_train  # train_stage looks it up at call time
    return main(argv)


def dlforge(name: str, args: list[str], timed: bool = True) -> dict:
    """Run one dlforge command in its own folder; its facts, wall time and summary."""
    folder = OUT / name.replace(" ", "-").replace("×", "x")
    folder.mkdir(parents=True, exist_ok=True)
    probe_file = folder / "probe.json"
    common = [f"output_dir={folder}", f"tracking.uri=sqlite:///{OUT / 'mlflow.db'}", "tracking.experiment=gpu-check"]
    head = [sys.executable, __file__, "--probe", str(probe_file)] if timed else [sys.executable, "-m", "pipelines"]
    started = time.perf_counter()
    done = subprocess.run([*head, *args, *common], cwd=ROOT, capture_output=True, text=True)
    facts = {"name": name, "wall_s": time.perf_counter() - started, "rc": done.returncode, "folder": str(folder)}
    if done.returncode != 0:
        facts["error"] = done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {name}: exit {done.returncode}: {facts['error'][0]}", flush=True)
        return facts
    rank0 = Path(f"{probe_file}.rank0")
    if rank0.is_file():
        facts |= json.loads(rank0.read_text())
    summary = folder / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        facts["metric"] = (data.get("metrics") or {}).get("test/acc") or (data.get("best") or {}).get("value")
    print(f"  {name}: done in {facts['wall_s']:.0f} s", flush=True)
    return facts


def ort_latency(onnx_file: Path, batch: int, provider: str, repeats: int = 200) -> float | None:
    """Median ms per batch of ``onnx_file`` on ``provider``; None when the provider is missing or fails."""
    import numpy as np
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return None
    try:
        session = ort.InferenceSession(str(onnx_file), providers=[provider])
    except Exception as exc:
        print(f"  ORT {provider}: {exc}", flush=True)
        return None
    spec = session.get_inputs()[0]
    shape = [batch, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
    feed = {spec.name: np.zeros(shape, dtype=np.float32)}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def train_variants(epochs: int) -> list[tuple[str, list[str]]]:
    import torch

    base = ["train", str(CONFIG), f"trainer.max_epochs={epochs}"]
    gpu = [*base, "trainer.accelerator=gpu", "trainer.devices=1"]
    variants = [
        ("cpu 32", [*base, "trainer.accelerator=cpu"]),
        ("gpu 32", [*gpu, "trainer.precision=32"]),
        ("gpu 16-mixed", [*gpu, "trainer.precision=16-mixed"]),
    ]
    if torch.cuda.is_bf16_supported():
        variants.insert(2, ("gpu bf16-mixed", [*gpu, "trainer.precision=bf16-mixed"]))
    if torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        ddp = [*base, "trainer.accelerator=gpu", f"trainer.devices={n}", "trainer.strategy=ddp"]
        variants.append((f"gpu ddp ×{n}", ddp))
    return variants


def sweep_variants(epochs: int) -> list[tuple[str, list[str]]]:
    base = ["tune", str(CONFIG), "tune.num_samples=4", f"trainer.max_epochs={epochs}"]
    return [
        ("sweep cpu", [*base, "trainer.accelerator=cpu"]),
        ("sweep gpu 0.5", [*base, "trainer.accelerator=gpu", "tune.resources_per_trial.gpu=0.5"]),
    ]


def compress_latency(teacher_folder: str, epochs: int) -> list[str]:
    """``dlforge compress`` of the GPU teacher, then its ONNX file on ORT's CPU and CUDA providers."""
    checkpoint = Path(teacher_folder) / "checkpoints" / "best.ckpt"
    args = ["compress", str(CONFIG), "--teacher", str(checkpoint), f"compress.epochs={epochs}"]
    done = dlforge("compress", args, timed=False)
    if done["rc"] != 0:
        return [f"compress: failed ({done.get('error', ['?'])[0]})"]
    found = sorted(Path(done["folder"]).rglob("teacher.onnx")) or sorted(Path(done["folder"]).rglob("*.onnx"))
    if not found:
        return ["compress: no ONNX file found"]
    lines = [f"compress: {done['wall_s']:.0f} s; ONNX Runtime latency of {found[0].name} (median ms per batch):"]
    for batch in (1, 64):
        cpu, cuda = (ort_latency(found[0], batch, p) for p in ("CPUExecutionProvider", "CUDAExecutionProvider"))
        cuda_text = f"{cuda:.3f}" if cuda is not None else "— (no CUDAExecutionProvider: pip install onnxruntime-gpu)"
        lines.append(f"  batch {batch:>2}: CPU {cpu:.3f}   CUDA {cuda_text}")
    return lines


def table(rows: list[dict]) -> str:
    cpu = {r["name"].split()[0]: r for r in rows if r["name"].endswith("cpu 32") or r["name"] == "sweep cpu"}

    def num(value, fmt):
        width = int(fmt.split(".")[0] or 0)
        return format(value, fmt) if isinstance(value, int | float) else "—".rjust(width)

    lines = [
        f"{'job':<16} {'examples/s':>11} {'epoch s':>8} {'GPU MiB':>8} {'test acc':>9} {'wall s':>7} {'vs CPU':>7}",
    ]
    for r in rows:
        ref = cpu.get("sweep") if r["name"].startswith("sweep") else cpu.get("cpu")
        speedup = ref["wall_s"] / r["wall_s"] if ref and r.get("rc") == 0 else None
        if r.get("rc") != 0:
            lines.append(f"{r['name']:<16} failed: {r.get('error', ['?'])[0]}")
            continue
        lines.append(
            f"{r['name']:<16} {num(r.get('examples_per_s'), '11.0f')} {num(r.get('epoch_s'), '8.3f')} "
            f"{num(r.get('gpu_mib'), '8.0f')} {num(r.get('metric'), '9.4f')} {r['wall_s']:7.1f} "
            f"{num(speedup, '6.2f')}×"
        )
    return "\n".join(lines)


def main(epochs: int) -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: skipped — torch sees no CUDA device here")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, {epochs} epochs, in {OUT}")
    rows = [dlforge(name, args) for name, args in train_variants(epochs)]
    rows += [dlforge(name, args, timed=False) for name, args in sweep_variants(epochs)]
    gpu32 = next((r for r in rows if r["name"] == "gpu 32" and r.get("rc") == 0), None)
    notes = compress_latency(gpu32["folder"], epochs) if gpu32 else ["compress: skipped (the GPU training failed)"]
    print()
    print(table(rows))
    print("\n".join(notes))
    (OUT / "gpu_check.json").write_text(json.dumps({"rows": rows, "compress": notes}, indent=2))
    return 0 if all(r.get("rc") == 0 for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        sys.exit(probe(sys.argv[2], sys.argv[3:]))
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
