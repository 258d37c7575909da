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
