"""The GPU paths: supernet training, stage one and latency on CUDA compute what the CPU
computes, and what they write loads and resumes on a machine without one (fine-tuning
takes a GPU whenever torch sees one: the whole suite run there covers it). Skipped
where there is no CUDA GPU (CI, the 2-core machine)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nasbert import RunDir, Supernet
from nasbert.extract import save_subnet
from nasbert.latency.measure import Protocol, fingerprint, measure
from nasbert.recipe import ScalingConfig, load_recipe
from nasbert.train import DistillConfig, distill, train_supernet

from conftest import StopAt, tiny_recipe_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ARCH = "E32|H32:M,F|H32:M,S3"
QUICK = DistillConfig(tokens=8 * 8 * 32, batch_size=8, lr=2e-3, warmup_ratio=0.1,
                      checkpoint_every=4, log_every=2, dev_batches=1)


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matrix products and convolutions round to 10 bits: compare in float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train(tiny_teacher, tiny_corpus, folder, *, gpu: bool, stop: int | None = None) -> dict:
    recipe_path = folder / "recipe.yaml"
    folder.mkdir(exist_ok=True)
    recipe_path.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=10,
                                            checkpoint_every=5))
    recipe = load_recipe(recipe_path)
    recipe = dataclasses.replace(recipe, scaling=ScalingConfig(use_gpu=gpu))
    callbacks = [StopAt(stop)] if stop else []
    return train_supernet(recipe, folder / "run", progress=False, callbacks=callbacks)


def test_a_subnet_computes_the_same_on_the_gpu(minilm_prune_space, tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    net = Supernet(minilm_prune_space, vocab_size=2000)
    for i in range(4):
        folder = tmp_path / f"m{i}"
        net.extract(minilm_prune_space.sample(i)).save_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        ids = torch.randint(5, 2000, (2, 48))
        mask = torch.ones_like(ids)
        mask[1, 30:] = 0
        with torch.no_grad():
            cpu = model(input_ids=ids, attention_mask=mask).last_hidden_state
            gpu = model.cuda()(input_ids=ids.cuda(), attention_mask=mask.cuda())
        diff = (gpu.last_hidden_state.cpu() - cpu).abs().max().item()
        assert diff < 1e-4 * max(1.0, cpu.abs().max().item()), (i, diff)


def test_supernet_trains_on_the_gpu_like_on_the_cpu_and_resumes_on_the_cpu(
        tiny_teacher, tiny_corpus, tmp_path):
    cpu = _train(tiny_teacher, tiny_corpus, tmp_path / "cpu", gpu=False)
    gpu = _train(tiny_teacher, tiny_corpus, tmp_path / "gpu", gpu=True)
    # same data, paths and initialisation: the losses differ by rounding only
    for block, loss in cpu["dev_loss_end"].items():
        assert gpu["dev_loss_end"][block] == pytest.approx(loss, rel=0.02), block
    # stopped on the GPU after its step-5 checkpoint, finished without one
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_teacher, tiny_corpus, tmp_path / "moved", gpu=True, stop=7)
    resumed = _train(tiny_teacher, tiny_corpus, tmp_path / "moved", gpu=False)
    assert resumed["steps"] == 10
    for block, loss in cpu["dev_loss_end"].items():
        assert resumed["dev_loss_end"][block] == pytest.approx(loss, rel=0.02), block


def test_stage_one_on_the_gpu_matches_the_cpu_and_resumes_on_the_cpu(tiny_run):
    run = RunDir(tiny_run)
    for name in ("cpu", "gpu", "moved"):
        save_subnet(run.supernet(), ARCH, run.subnet_dir(name))
    cpu = distill(run, ["cpu"], QUICK, progress=False)["cpu"]
    gpu = distill(run, ["gpu"], QUICK, scaling=ScalingConfig(use_gpu=True),
                  progress=False)["gpu"]
    assert gpu["dev_loss_end"]["loss"] < 0.9 * gpu["dev_loss_start"]["loss"]
    assert gpu["dev_loss_start"]["loss"] == pytest.approx(cpu["dev_loss_start"]["loss"],
                                                          rel=1e-3)
    # 8 steps at a high rate: 2.4 % apart measured on an H100
    assert gpu["dev_loss_end"]["loss"] == pytest.approx(cpu["dev_loss_end"]["loss"], rel=0.05)
    with pytest.raises(KeyboardInterrupt):
        distill(run, ["moved"], QUICK, scaling=ScalingConfig(use_gpu=True), progress=False,
                callbacks=[StopAt(6)])
    moved = distill(run, ["moved"], QUICK, progress=False)["moved"]
    assert moved["dev_loss_end"]["loss"] == pytest.approx(cpu["dev_loss_end"]["loss"],
                                                          rel=0.05)


def test_latency_on_cuda_is_measured_with_events_and_fingerprinted(tiny_run):
    from transformers import AutoModel

    run = RunDir(tiny_run)
    protocol = Protocol(batch=8, seq=64, warmup=2, repeats=5, device="cuda")
    assert fingerprint(protocol)["gpu"] == torch.cuda.get_device_name()
    save_subnet(run.supernet(), ARCH, run.subnet_dir("timed"))
    ms = measure(AutoModel.from_pretrained(run.subnet_dir("timed")), protocol)
    assert 0 < ms < 1_000, ms


def test_a_cuda_latency_table_is_profiled_and_fitted(tiny_run):
    from nasbert.latency.stage import fit, profile

    run = RunDir(tiny_run)
    protocol = Protocol(batch=8, seq=32, warmup=1, repeats=3, device="cuda")
    table = profile(run, protocol, samples=12, progress=False)
    assert table is not None
    assert fit(run, protocol) is not None
