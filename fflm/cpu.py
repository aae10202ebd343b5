"""What the CPU can do, from its flags and from LLVM: the bfloat16 engines' run-time choice
(fflm/bf16.py) and the figures' record of the machine (fflm/bench.py)."""

import ctypes
import functools
import os


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags, from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def amx_available():
    """True where the CPU has AMX-BF16 tiles, the compiler targets them and Linux lets this
    process use them (a process must ask first: arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA), or its first tile instruction is killed). FFLM_NO_AMX=1 says no."""
    if os.environ.get("FFLM_NO_AMX") == "1":
        return False
    if not {"amx_bf16", "amx_tile"} <= cpu_flags():
        return False
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features()
    if not (features.get("amx-bf16") and features.get("amx-tile")):
        return False  # an LLVM that cannot emit the tile instructions for this CPU
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
        return libc.syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def avx512_bf16_available():
    """True where the CPU has AVX512-BF16 (`vdpbf16ps`: 16 float32 sums of bfloat16 pairs in one
    instruction; AMD Zen 4, Intel Cooper Lake and later) and this LLVM targets it.
    FFLM_NO_AVX512_BF16=1 says no."""
    if os.environ.get("FFLM_NO_AVX512_BF16") == "1":
        return False
    if not {"avx512f", "avx512_bf16"} <= cpu_flags():
        return False
    import llvmlite.binding as ll

    if not ll.get_host_cpu_features().get("avx512bf16"):
        return False
    ll.initialize_native_asmparser()  # the kernel's inline vdpbf16ps needs it before it compiles; once a process
    return True
