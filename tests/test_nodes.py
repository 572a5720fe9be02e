"""The train and generate stages as two nodes, launched as on a cluster but on this machine: two
`torchrun --nnodes 2 --node-rank 0|1` processes on localhost, one worker each, on the CPU (gloo).
Lightning finds the ranks in torchrun's environment by itself; tests/record_draws.py records what
each rank drew. Also: a rank that reads the resume folder while rank 0 clears it decides as rank 0 does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from conftest import FAST_GAN, REPO_ROOT, TINY_PARAMS, copy_outputs, merge_dicts, tiny_params, write_params
from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, SyntheticSummary
from pipeline.errors import ConfigError
from pipeline.gan.data import TrainImages
from pipeline.hardware import launched_processes, trainer_settings
from pipeline.io import read_manifest, write_json
from pipeline.nets import load_generator, weights_hash
from pipeline.paths import Paths
from pipeline.stages import generate, train
from test_generate import NO_LABEL_CHECK, save_untrained_judge, save_untrained_models

RECORDER = Path(__file__).with_name("record_draws.py")
ON_THE_CPU = {"accelerator": "cpu", "devices": 1}
TRAIN = {**FAST_GAN, **ON_THE_CPU, "max_epochs": 1}
GENERATE = {**NO_LABEL_CHECK, **ON_THE_CPU, "target": 40, "batch_size": 8}  # 92 candidates, 12 rounds
TRAIN_IMAGES = 498  # the tiny train split: each of two ranks trains on 249 of an epoch, 7 full batches


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_as_two_nodes(stage: str, folder: Path, record_to: Path, timeout: float = 300) -> list[str]:
    """`torchrun --nnodes 2 --node-rank R ... tests/record_draws.py record_to stage` for R = 0 and 1 at
    once, in `folder`, one thread per process; what each node printed (also in record_to/node<R>.log).
    Both must succeed."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    record_to.mkdir(parents=True, exist_ok=True)
    logs = [record_to / f"node{rank}.log" for rank in (0, 1)]
    with contextlib.ExitStack() as stack:
        nodes = [
            subprocess.Popen(
                # `python -m torch.distributed.run` is the `torchrun` command of this environment
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank)]
                + ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
                + [str(RECORDER), str(record_to), stage],
                cwd=folder,
                env=env,
                stdout=stack.enter_context(log.open("w")),  # a file, not a pipe: no node can block on it
                stderr=subprocess.STDOUT,
            )
            for rank, log in enumerate(logs)
        ]
        try:
            codes = [node.wait(timeout=timeout) for node in nodes]
        finally:
            for node in nodes:
                if node.poll() is None:
                    node.terminate()  # torchrun stops its worker on SIGTERM
                    node.wait()
    printed = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(text[-3000:] for text in printed)
    return printed


def images_drawn(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    """How often each (label, image) was drawn."""
    return Counter((int(label), image.numpy().tobytes()) for image, label in zip(images, labels))


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_two_node_ranks_train_one_model_on_different_draws_and_rank_zero_alone_writes_it(prepared_tiny, tmp_path):
    paths = Paths(copy_outputs(prepared_tiny, tmp_path / "stage"))
    write_params(paths.root, merge_dicts(TINY_PARAMS, {"train": {**TRAIN, "num_nodes": 2}}))
    printed = run_as_two_nodes("train", paths.root, tmp_path / "drawn")

    # One run of two processes: Lightning joined the ranks over gloo.
    assert "distributed_backend=gloo" in printed[0] and "MEMBER: 2/2" in printed[1]
    # Rank 0 alone wrote the stage's outputs, each once: one model, one checkpoint (and its copy in
    # models/gan), nothing left over.
    assert "train: 7 batches in 1 epochs; wrote models/gan/generator_ema.pt" in printed[0]
    assert not [line for line in printed[1].splitlines() if line.startswith("train: ")]
    assert sorted(p.name for p in paths.gan.iterdir()) == ["generator_ema.json", "generator_ema.pt", "last.ckpt"]
    assert sorted(p.name for p in (paths.root / "models").iterdir()) == ["gan", "gan-resume"]
    assert sorted(p.name for p in (paths.root / "reports").iterdir()) == ["samples", "train"]
    checkpoints = sorted(paths.root.rglob("*.ckpt"))
    assert checkpoints == [paths.gan / "last.ckpt", paths.gan_resume / "last.ckpt"]
    assert checkpoints[0].read_bytes() == checkpoints[1].read_bytes()
    generator, meta = load_generator(paths.gan)
    assert meta.details.batches == TRAIN_IMAGES // 2 // 32  # each rank trained on half of the epoch

    # The ranks drew different images: disjoint shares of the one class-balanced draw that a single
    # process makes of the epoch (no image more often than it draws it), and latents of their own.
    drawn = [torch.load(tmp_path / "drawn" / f"rank{rank}.pt") for rank in (0, 1)]
    assert [len(ranks["images"]) for ranks in drawn] == [7 * 32, 7 * 32]
    assert not torch.equal(drawn[0]["images"], drawn[1]["images"])
    params = tiny_params(train=TRAIN)
    one_process = TrainImages(paths.prepared, params.train.batch_size, params.train.balance, params.seed)
    one_process.setup("fit")
    epoch = [one_process.dataset[index] for index in one_process.train_dataloader().sampler]
    one_process_draws = images_drawn(torch.stack([x for x, _ in epoch]), torch.stack([y for _, y in epoch]))
    both_ranks = images_drawn(drawn[0]["images"], drawn[0]["labels"]) + images_drawn(
        drawn[1]["images"], drawn[1]["labels"]
    )
    assert both_ranks <= one_process_draws
    assert not (drawn[0]["noise"][:, None] == drawn[1]["noise"][None]).all(-1).any()  # no latent drawn twice

    # generate reads the model the two nodes trained.
    save_untrained_judge(paths)
    generate.run(tiny_params(generate=GENERATE), paths)
    assert SyntheticSummary.read(paths.synthetic).generator_hash == weights_hash(generator)


@pytest.fixture
def one_thread():
    """One PyTorch thread in this process, as each torchrun worker has (OMP_NUM_THREADS=1): on the CPU
    the kernels PyTorch picks, and so the last bits of an image, depend on the threads per process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_node_ranks_share_generates_batches_and_write_the_files_of_one_process(workspace, tmp_path, one_thread):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate=GENERATE), workspace)
    one_process = files_under(workspace.synthetic)
    shutil.rmtree(workspace.synthetic)

    write_params(workspace.root, merge_dicts(TINY_PARAMS, {"generate": {**GENERATE, "num_nodes": 2}}))
    printed = run_as_two_nodes("generate", workspace.root, tmp_path / "drawn")
    assert "MEMBER: 2/2" in printed[1]
    assert files_under(workspace.synthetic) == one_process
    assert len(one_process) == 92 + 3  # the images of the plan, manifest.csv, plan.csv, summary.json
    # Both ranks sampled: each a share of the candidates, together every candidate the manifest lists.
    seeds = [set(torch.load(tmp_path / "drawn" / f"rank{rank}.pt")["seeds"].tolist()) for rank in (0, 1)]
    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    assert seeds[0] and seeds[1] and not seeds[0] & seeds[1]
    assert seeds[0] | seeds[1] == set(manifest["seed"].tolist())


# --- the launcher's processes against the params -------------------------------------------------


@pytest.fixture
def no_launcher(monkeypatch):
    """An environment without torchrun's or SLURM's variables (a test sets the ones it needs)."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_launched_processes_are_read_from_torchrun_or_slurm(no_launcher):
    assert launched_processes() == 1
    for name, value in {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "gan"}.items():
        no_launcher.setenv(name, value)  # as srun sets them for 2 nodes of 4 tasks
    assert launched_processes() == 8
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "none")
    no_launcher.setenv("WORLD_SIZE", "4")
    assert launched_processes() == 4


def test_the_launchers_processes_must_be_the_params_processes():
    two_nodes = tiny_params(train={**ON_THE_CPU, "num_nodes": 2}).train
    assert trainer_settings(two_nodes, 0, "train", launched=2)["num_nodes"] == 2
    with pytest.raises(ConfigError, match=r"^train\.num_nodes 2 x train\.devices 1 make 2 process\(es\), but the "):
        trainer_settings(two_nodes, 0, "train", launched=4)


@pytest.mark.parametrize("stage", ["train", "generate"])
def test_a_stage_that_torchrun_started_twice_with_one_process_in_its_params_stops_before_it_starts(
    stage, workspace, no_launcher
):
    """Left alone, each process would train (or sample) as the only one and write the outputs."""
    save_untrained_models(workspace)  # what generate reads
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "none")
    no_launcher.setenv("WORLD_SIZE", "2")
    no_launcher.setattr(pl, "Trainer", None)  # none may be made
    expected = f"{stage}.num_nodes 1 x {stage}.devices 1 make 1 process(es), but the launcher (torchrun or srun) "
    expected += "started 2; set"
    with pytest.raises(ConfigError, match="^" + re.escape(expected)):
        {"train": train, "generate": generate}[stage].run(tiny_params(**{stage: ON_THE_CPU}), workspace)


# --- the resume folder under concurrent ranks ----------------------------------------------------


def test_a_rank_that_reads_the_resume_folder_while_rank_zero_clears_it_starts_fresh_too(tmp_path, monkeypatch):
    """Under torchrun or srun every rank runs the stage at once: rank 0 clears a resume folder made with
    other params while the others read it to make the same decision. Rank 0's fresh start is run before
    each of rank 1's reads in turn; rank 1 must start fresh every time, never resume from a checkpoint
    that rank 0 is deleting."""
    folder = tmp_path / "gan-resume"
    watching, reads, interrupt_at = False, 0, 0  # rank 1's reads of the folder, and before which rank 0 runs

    def stale_folder() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / train.CHECKPOINT).write_bytes(b"a checkpoint of other params")
        write_json(folder / "fingerprint.json", {"fingerprint": "other params"})

    def counting(read):
        def counted(path, *args, **kwargs):
            nonlocal watching, reads
            if watching and path.parent == folder:
                reads += 1
                if reads == interrupt_at:  # rank 0's whole fresh start, then rank 1 reads on
                    watching = False
                    monkeypatch.setattr(rank_zero_only, "rank", 0)
                    assert train._resume_checkpoint(folder, "these params") is None
                    monkeypatch.setattr(rank_zero_only, "rank", 1)
            return read(path, *args, **kwargs)

        return counted

    for method in ("is_file", "exists", "read_text", "read_bytes", "open", "stat"):
        monkeypatch.setattr(Path, method, counting(getattr(Path, method)))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    while True:
        stale_folder()
        watching, reads, interrupt_at = True, 0, interrupt_at + 1
        assert train._resume_checkpoint(folder, "these params") is None, f"rank 0 cleared before read {interrupt_at}"
        if watching:  # rank 1 made fewer reads than interrupt_at: every point has been tried
            break
    assert interrupt_at > 2  # rank 1 read the folder at least twice (the fingerprint and the checkpoint)
