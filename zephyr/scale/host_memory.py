"""What glibc's ``malloc`` does with freed host memory: keep it for the next step, or give it back to the OS.

A CPU training step allocates and frees the same few GB of activations, gradients and temporaries every step.
glibc's defaults serve blocks above a dynamic threshold (at most 32 MiB: the 113 MB embedding gradient, the
``(chunk, V)`` logits) with fresh ``mmap`` pages and trim the heap top on ``free``, so a large share of each step's
memory is faulted in again, page by page, zeroed by the kernel. Measured on the realistic bench shape (2 threads,
SmolLM2 dims at 20 layers, a DPO batch of 4 pairs): 130-450 k minor page faults per later step (0.5-1.8 GB) and
0.85 M in the first; keeping freed memory (:func:`retain_freed_host_memory`) takes steady-state faults to about
zero, the reference-cache fill from 10.1 to 8.1 s and the run's DPO tokens/s up 5 % (the bench's
``system_allocator`` row), peak RSS 0.98-1.00x of glibc's defaults there. Where many small buffers fragment the
heap (LoRA's dropout copies) the peak stays above the working set, as with glibc's defaults. The opposite setting
(:func:`return_freed_host_memory`) is what FSDP2 on CPU needs, where fragmentation of per-layer buffers would keep
the unsharded copies resident.

:func:`configure_host_allocator` applies ``hardware.host_allocator`` (``conf/hardware/*.yaml``):

* ``auto`` (default): ``retain`` on a CPU run, except under FSDP2 (``strategy=fsdp``), where
  :meth:`zephyr.modules.base.ZephyrModule.configure_model` applies ``release``; GPU runs leave glibc alone;
* ``retain`` / ``release`` / ``system`` (glibc's own defaults, untouched).

Process-wide and numerically neutral (only where pages come from). Off glibc (macOS, musl) nothing is applied.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)
_APPLIED: dict[str, str | None] = {"mode": None}  # what configure_host_allocator last applied in this process

HOST_ALLOCATOR_MODES = ("auto", "retain", "release", "system")
HOST_MMAP_THRESHOLD = 1 << 20  # bytes: under ``release``, host allocations from 1 MiB up are mmapped
RETAIN_TOP_PAD = 256 << 20  # bytes: under ``retain``, the heap grows by at least this much at a time

# <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
NEVER_TRIM = -1  # mallopt takes an int, glibc keeps a size_t: -1 is SIZE_MAX, the heap top is never trimmed


def _mallopt(settings: Iterable[tuple[int, int]]) -> bool:
    """Apply ``(param, value)`` pairs with glibc's ``mallopt``; ``False`` off glibc or when one is refused."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = True
    for param, value in settings:
        ok = bool(mallopt(param, int(value))) and ok
    return ok


def retain_freed_host_memory(top_pad: int = RETAIN_TOP_PAD) -> bool:
    """Serve every host allocation from the heap and never trim it, so freed blocks are reused, not re-faulted.

    ``M_MMAP_MAX=0`` (no ``mmap``-backed blocks, whatever their size), ``M_TRIM_THRESHOLD`` out of reach (the heap
    top is kept after ``free``) and ``M_TOP_PAD=top_pad`` (fewer, larger heap extensions). RSS no longer drops
    after its peak.

    Returns:
        Whether every setting was applied (``False`` off glibc).
    """
    return _mallopt(((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, top_pad)))


def return_freed_host_memory(threshold: int = HOST_MMAP_THRESHOLD) -> bool:
    """Make glibc serve host allocations of ``threshold`` bytes and more with ``mmap`` (``mallopt``), so a freed
    buffer goes back to the OS at once instead of staying resident in the heap.

    FSDP2 on CPU allocates and frees a decoder layer's unsharded weights and gradients (all-gather outputs,
    reduce-scatter inputs) every step. glibc's default *dynamic* mmap threshold rises to the size of the largest
    freed block (up to 32 MiB), so those buffers end up in the brk heap and per-thread arenas (gloo's threads),
    where fragmentation keeps them resident: measured on a 52M-parameter checkpoint with 2 ranks, the per-rank
    step peak over the ``setup`` RSS was 1.21-1.31 GB with the default and 0.77-0.79 GB with a fixed threshold,
    the one-process run being 1.24 GB. A fixed threshold also turns the dynamic adjustment off. Process-wide
    and numerically neutral; applied by :meth:`ZephyrModule.configure_model` under FSDP2 on CPU only.

    Returns:
        Whether the setting was applied (``False`` off glibc, e.g. macOS).
    """
    # retain's settings undone too: mmap allowed again, glibc's default trim threshold and top pad (128 KiB)
    defaults = ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 << 10), (M_TOP_PAD, 128 << 10))
    return _mallopt((*defaults, (M_MMAP_THRESHOLD, threshold)))


def check_host_allocator(mode: object) -> str:
    """``mode`` if it is a ``hardware.host_allocator`` value, else a one-line ``ValueError`` naming the key."""
    if mode not in HOST_ALLOCATOR_MODES:
        raise ValueError(f"hardware.host_allocator={mode!r} must be one of {', '.join(HOST_ALLOCATOR_MODES)}")
    return str(mode)


def resolve_host_allocator(mode: str, *, accelerator: str, strategy: str = "auto") -> str:
    """What ``mode`` means for this run: ``auto`` is ``retain`` on CPU (but FSDP2's ``release``), else ``system``."""
    mode = check_host_allocator(mode)
    if mode != "auto":
        return mode
    if str(accelerator) != "cpu":
        return "system"
    return "release" if str(strategy) == "fsdp" else "retain"


def configure_host_allocator(mode: str, *, accelerator: str, strategy: str = "auto") -> str:
    """Apply ``hardware.host_allocator`` for this process (see the module docstring) and return what it resolved to.

    Raises:
        ValueError: ``mode`` is not one of :data:`HOST_ALLOCATOR_MODES` (naming ``hardware.host_allocator``).
    """
    resolved = resolve_host_allocator(mode, accelerator=accelerator, strategy=strategy)
    apply = {"retain": retain_freed_host_memory, "release": return_freed_host_memory}.get(resolved)
    if apply is not None and not apply():
        log.info("hardware.host_allocator=%s: not glibc, the system allocator's defaults are kept", resolved)
        resolved = "system"
    _APPLIED["mode"] = resolved
    return resolved


def host_allocator_mode() -> str | None:
    """What :func:`configure_host_allocator` last applied in this process (``None``: never called)."""
    return _APPLIED["mode"]


class KeptGradients:
    """Zero the parameters' gradients in place between optimizer steps, with ``set_to_none=True``'s semantics.

    ``optimizer.zero_grad()`` (``set_to_none=True``, torch's default) drops every ``.grad``, so each backward
    allocates the gradients again (4 bytes per trained parameter) wherever the heap is free at that moment, among
    the step's activations. Under ``retain`` on CPU that layout shifts from step to step and the heap keeps growing
    for several steps, every new page a fault: measured on the realistic bench shape (DPO, 4 pairs), steps 1-3 at
    10.4-10.8, 9.6 and 8.1 s with 0.4-0.5 M faults each and RSS climbing to 6.5 GB, against 10.4, 8.3 and 8.3 s and
    5.6 GB with the gradients kept. Kept, the same buffers are reused every step.

    Exactness: a kept buffer starts the next backward at ``+0``, and ``0 + g == g``. A parameter that got no
    gradient since the last :meth:`zero` (an expert no token was routed to) has its buffer dropped by
    :meth:`drop_untouched` before the optimizer step, so the optimizer skips it exactly as after
    ``set_to_none=True``; a post-accumulate-grad hook on each parameter records which ones got one.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]
        self._touched: set[int] = set()
        self._handles = [p.register_post_accumulate_grad_hook(self._mark) for p in self.params]

    def _mark(self, param: torch.Tensor) -> None:
        self._touched.add(id(param))

    def drop_untouched(self) -> int:
        """Set ``.grad = None`` on every parameter that got no gradient since :meth:`zero`; return how many."""
        dropped = 0
        for p in self.params:
            if p.grad is not None and id(p) not in self._touched:
                p.grad = None
                dropped += 1
        return dropped

    def zero(self) -> None:
        """Zero every kept gradient in place (one ``foreach`` call) and forget which parameters got one."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)
        self._touched.clear()

    def remove(self) -> None:
        """Remove the hooks (the gradients stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles = []


__all__ = [
    "HOST_ALLOCATOR_MODES",
    "KeptGradients",
    "check_host_allocator",
    "configure_host_allocator",
    "host_allocator_mode",
    "resolve_host_allocator",
    "retain_freed_host_memory",
    "return_freed_host_memory",
]
