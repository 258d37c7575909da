"""hardware.host_allocator: what each mode resolves to, what retain/release do to glibc, the run's one-line error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zephyr.errors import ConfigError
from zephyr.scale.host_memory import HOST_ALLOCATOR_MODES, check_host_allocator, resolve_host_allocator


def test_auto_is_retain_on_cpu_release_under_fsdp2_and_system_on_gpu():
    assert resolve_host_allocator("auto", accelerator="cpu") == "retain"
    assert resolve_host_allocator("auto", accelerator="cpu", strategy="ddp") == "retain"
    assert resolve_host_allocator("auto", accelerator="cpu", strategy="fsdp") == "release"
    assert resolve_host_allocator("auto", accelerator="gpu", strategy="fsdp") == "system"
    for mode in ("retain", "release", "system"):  # explicit modes are taken as written
        assert resolve_host_allocator(mode, accelerator="gpu") == mode


@pytest.mark.parametrize("bad", ["keep", "", None, 1, "Retain"])
def test_bad_mode_names_the_key_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"hardware.host_allocator=.* must be one of auto, retain, release, system"):
        check_host_allocator(bad)
    assert HOST_ALLOCATOR_MODES == ("auto", "retain", "release", "system")


def test_every_hardware_preset_names_the_key(compose):
    for hw in ("cpu", "gpu1", "a100x8", "a100x16", "h100x8"):
        assert compose(f"hardware={hw}").hardware.host_allocator == "auto"


def test_run_refuses_a_bad_value_in_one_line(compose):
    from zephyr.run import apply_host_allocator
    from zephyr.scale.plan import prepare

    cfg = compose("hardware.host_allocator=keep")
    with pytest.raises(ConfigError) as err:
        apply_host_allocator(cfg, prepare(cfg, print_memory=False))
    assert str(err.value) == "hardware.host_allocator='keep' must be one of auto, retain, release, system"


# In subprocesses: the settings are process-wide. A 64 MiB block is allocated, written and freed over and over;
# the minor page faults of the last 10 rounds say whether freed pages were kept (retain: ~0 once the heap has
# grown to its high-water mark, which glibc's aligned allocations reach within the first ~10 rounds) or went back
# to the OS on every free and came back zeroed one 4 KiB page at a time (glibc's default here: 16k per round).
_REUSE = """
import resource, sys, torch
from zephyr.scale.host_memory import configure_host_allocator
print(configure_host_allocator(sys.argv[1], accelerator="cpu"))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):
    if i == 20:
        before = faults()
    x = torch.ones(16 * 2**20)  # 64 MiB, written
    del x
print(faults() - before)
"""


def _run(code: str, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_retain_reuses_freed_pages_and_system_faults_them_in_again():
    applied, retained = _run(_REUSE, "retain")
    assert applied == "retain"
    applied, system = _run(_REUSE, "system")
    assert applied == "system"
    pages = 10 * 64 * 2**20 // 4096
    assert int(retained) < pages // 20, (retained, system)  # the freed blocks' pages came back from the heap
    assert int(system) > pages // 2, (retained, system)  # munmap'd on free, each page faulted in again


def test_release_after_retain_returns_freed_blocks_to_the_os():
    """``release`` undoes ``retain`` (FSDP2 on CPU after a one-process run in the same process): freed 4 MiB blocks
    leave RSS again instead of staying in the never-trimmed heap."""
    code = """
import sys, torch
from zephyr.scale.host_memory import retain_freed_host_memory, return_freed_host_memory
def rss_mib():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:")) // 1024
assert retain_freed_host_memory()
if sys.argv[1] == "release":
    assert return_freed_host_memory()
kept = [torch.ones(2**20) for _ in range(16)]  # 4 MiB each, 64 MiB in all
before = rss_mib()
del kept
print(before - rss_mib())
"""
    (released,) = _run(code, "release")
    (retained,) = _run(code, "retain")
    assert int(released) >= 56 and int(retained) <= 8, (released, retained)


def _train(params, keep: bool, steps: int = 3):
    """AdamW with weight decay over ``steps``; parameter 1 (an "expert") gets a gradient in step 0 only."""
    import torch

    from zephyr.scale.host_memory import KeptGradients

    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    kept = KeptGradients(params) if keep else None
    for step in range(steps):
        loss = (params[0] * torch.arange(1.0, 4.0)).sum() ** 2
        if step == 0:
            loss = loss + params[1].sum()
        loss.backward()
        if kept is not None:
            kept.drop_untouched()
        opt.step()
        if kept is not None:
            kept.zero()
        else:
            opt.zero_grad()
    return [p.detach().clone() for p in params]


def test_kept_gradients_train_exactly_as_set_to_none_and_skip_what_got_no_gradient():
    import torch

    def fresh():
        return [torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0])), torch.nn.Parameter(torch.ones(2))]

    baseline, kept = _train(fresh(), keep=False), _train(fresh(), keep=True)
    for a, b in zip(baseline, kept):
        assert torch.equal(a, b)
    # without dropping its stale zero, the idle parameter would still decay and move with its Adam moments
    params = fresh()
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    params[1].sum().backward()
    opt.step()
    params[1].grad.zero_()
    before = params[1].detach().clone()
    opt.step()
    assert not torch.equal(params[1], before)


def test_a_cpu_module_under_retain_keeps_one_gradient_buffer_and_trains_the_same(tokenizer, monkeypatch):
    import pytorch_lightning as pl
    import torch

    from tests.conftest import TINY_CONFIG
    from zephyr.data.collate import collate_rows
    from zephyr.data.sft import tokenize_conversation
    from zephyr.models.mistral import build_model
    from zephyr.modules.sft import SFTModule
    from zephyr.scale import host_memory

    conv = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}]
    e = tokenize_conversation(tokenizer, conv)
    batches = [collate_rows([[(e.input_ids, e.labels)]], pad_id=2)] * 3

    class Pointers(pl.Callback):
        def __init__(self):
            self.seen: list[int] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.seen.append(pl_module.model.lm_head.weight.grad.data_ptr())

    def fit(mode):
        monkeypatch.setitem(host_memory._APPLIED, "mode", mode)
        torch.manual_seed(0)
        module = SFTModule(
            build_model(config=TINY_CONFIG, init_seed=0), optimizer=torch.optim.AdamW, scheduler={"name": "constant"}
        )
        ptrs = Pointers()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ptrs],
        )
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
        return module, ptrs.seen

    kept, kept_ptrs = fit("retain")
    dropped, _ = fit("system")
    assert kept._kept_grads is not None and dropped._kept_grads is None
    assert len(set(kept_ptrs)) == 1 and len(kept_ptrs) == 3  # the same buffer every step
    for (name, a), (_, b) in zip(kept.model.named_parameters(), dropped.model.named_parameters()):
        assert torch.equal(a, b), name
