"""Build the device program (generated model + C entropy encoder) for the host and for a
Cortex-M7, run it (natively / in QEMU's mps2-an500), and read back what it produced.

Toolchain: the host C compiler for the host build; Debian's ``gcc-arm-none-eabi`` +
``libnewlib-arm-none-eabi`` for the ELF and ``qemu-system-arm`` to run it. With ``-icount
shift=0`` QEMU retires one instruction per virtual nanosecond and the mps2 SysTick runs at
25 MHz, so one tick is 40 executed instructions: an instruction counter, not a cycle model.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources

import numpy as np

HOST_CC = "gcc"
ARM_CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
ARM_FLAGS = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16")
OPT = "-O2"
INSTRUCTIONS_PER_TICK = 40  # -icount shift=0: 1 insn/ns; SysTick on the 25 MHz system clock
QEMU_ARGS = (
    "-M",
    "mps2-an500",
    "-cpu",
    "cortex-m7",
    "-nographic",
    "-monitor",
    "none",
    "-serial",
    "none",
    "-semihosting-config",
    "enable=on,target=native",
    "-icount",
    "shift=0",
)
DEBIAN_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")


class ToolchainError(RuntimeError):
    """A compiler or emulator is missing, or a build/run failed (the message says which)."""


def missing_tools(target: str) -> list[str]:
    """Executables a ``target`` ("host" or "m7") build-and-run needs but PATH lacks."""
    need = [HOST_CC] if target == "host" else [ARM_CC, QEMU, "arm-none-eabi-size"]
    return [t for t in need if shutil.which(t) is None]


def mcu_source(name: str) -> str:
    """Path of a shipped start-up/harness file (``csrc/mcu/``)."""
    return str(resources.files("agilenn_jax.deploy").joinpath("csrc", "mcu", name))


def _run(cmd: Sequence[str], cwd: str | None = None, timeout: float = 600) -> str:
    try:
        r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        hint = (
            f"; install the Debian packages {' '.join(DEBIAN_PACKAGES)}"
            if os.path.basename(cmd[0]) in (ARM_CC, QEMU, "arm-none-eabi-size")
            else ""
        )
        raise ToolchainError(f"{cmd[0]} not found{hint}") from None
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{cmd[0]} timed out after {timeout:.0f} s") from None
    if r.returncode != 0:
        raise ToolchainError(
            f"{os.path.basename(cmd[0])} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}"
        )
    return r.stdout


@dataclasses.dataclass(frozen=True)
class Sources:
    """What one device program is built from: generated + shipped C and include dirs."""

    c_files: tuple[str, ...]
    include_dirs: tuple[str, ...]
    defines: tuple[str, ...] = ()


def build_host(src: Sources, out_dir: str) -> str:
    """The device program as a native executable (same C, same outputs; no instruction counts)."""
    exe = os.path.abspath(os.path.join(out_dir, "agilenn_host"))  # runs with another cwd
    cmd = [HOST_CC, "-std=c99", OPT, "-Wall", "-Wextra", "-o", exe]
    cmd += [f"-I{d}" for d in src.include_dirs] + [f"-D{d}" for d in src.defines]
    _run([*cmd, *src.c_files, mcu_source("firmware_main.c")])
    return exe


def build_m7(src: Sources, out_dir: str) -> tuple[str, str]:
    """The device program as a Cortex-M7 ELF for QEMU's mps2-an500; returns (elf, map file)."""
    missing = missing_tools("m7")
    if missing:
        raise ToolchainError(
            f"missing {', '.join(missing)}: install the Debian packages {' '.join(DEBIAN_PACKAGES)}"
        )
    obj_dir = os.path.join(out_dir, "obj")
    os.makedirs(obj_dir, exist_ok=True)
    flags = [*ARM_FLAGS, "-std=c99", OPT, "-ffunction-sections", "-fdata-sections", "-Wall"]
    flags += [f"-I{d}" for d in src.include_dirs] + [f"-D{d}" for d in src.defines]
    objs = []
    harness = (mcu_source("firmware_main.c"), mcu_source("startup_m7.c"))
    for i, c in enumerate((*src.c_files, *harness)):
        obj = os.path.join(obj_dir, f"{i:03d}_{os.path.splitext(os.path.basename(c))[0]}.o")
        _run([ARM_CC, *flags, "-c", c, "-o", obj])
        objs.append(obj)
    elf = os.path.join(out_dir, "agilenn_m7.elf")
    map_file = os.path.join(out_dir, "agilenn_m7.map")
    link = [ARM_CC, *ARM_FLAGS, "-nostartfiles", "--specs=rdimon.specs", "-Wl,--gc-sections"]
    link += [f"-Wl,-Map={map_file}", "-T", mcu_source("mps2_an500.ld"), "-o", elf]
    _run([*link, *objs, "-lc", "-lrdimon"])
    return elf, map_file


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class DeviceOutputs:
    """What the device program produced for N samples."""

    logits: np.ndarray  # int8 [N, num_classes]
    features: np.ndarray  # int8 [N, H, W, C_r]
    frames: list[bytes]
    layer_ticks: np.ndarray  # [N, num_layers] (zeros on the host)
    encoder_ticks: np.ndarray  # [N]
    stack_bytes: np.ndarray  # [N] (zeros on the host)


def run_program(
    cmd: Sequence[str],
    images: np.ndarray,
    num_classes: int,
    remote_shape: tuple[int, int, int],
    num_layers: int,
    timeout: float = 600,
) -> DeviceOutputs:
    """Feed int8 images [N, H, W, 3] to a built program through input.bin; parse output.bin."""
    with tempfile.TemporaryDirectory() as tmp:
        np.ascontiguousarray(images, np.int8).tofile(os.path.join(tmp, "input.bin"))
        _run(cmd, cwd=tmp, timeout=timeout)
        with open(os.path.join(tmp, "output.bin"), "rb") as f:
            blob = f.read()
    return parse_outputs(blob, len(images), num_classes, remote_shape, num_layers)


def parse_outputs(
    blob: bytes, n: int, num_classes: int, remote_shape: tuple[int, int, int], num_layers: int
) -> DeviceOutputs:
    feat = int(np.prod(remote_shape))
    pos, logits, features, frames, ticks, enc, stack = 0, [], [], [], [], [], []
    for i in range(n):
        need = num_classes + feat + 4
        if pos + need > len(blob):
            raise ToolchainError(f"device output ends inside sample {i} of {n}")
        logits.append(np.frombuffer(blob, np.int8, num_classes, pos))
        features.append(np.frombuffer(blob, np.int8, feat, pos + num_classes))
        pos += num_classes + feat
        (length,) = struct.unpack_from("<I", blob, pos)
        if pos + 4 + length + 4 * (num_layers + 2) > len(blob):
            raise ToolchainError(f"device output ends inside sample {i} of {n}")
        frames.append(bytes(blob[pos + 4 : pos + 4 + length]))
        pos += 4 + length
        vals = struct.unpack_from(f"<{num_layers + 2}I", blob, pos)
        pos += 4 * (num_layers + 2)
        ticks.append(vals[:num_layers])
        enc.append(vals[num_layers])
        stack.append(vals[num_layers + 1])
    if pos != len(blob):
        raise ToolchainError(f"device output has {len(blob) - pos} unexpected trailing bytes")
    return DeviceOutputs(
        logits=np.stack(logits),
        features=np.stack(features).reshape(n, *remote_shape),
        frames=frames,
        layer_ticks=np.asarray(ticks, np.int64),
        encoder_ticks=np.asarray(enc, np.int64),
        stack_bytes=np.asarray(stack, np.int64),
    )


def qemu_command(elf: str) -> list[str]:
    return [QEMU, *QEMU_ARGS, "-kernel", os.path.abspath(elf)]


# ----------------------------------------------------------------------------- footprint

_MAP_LINE = re.compile(
    r"^\s*(\.(?:text|rodata|data|bss|vectors|ARM\.exidx)\S*)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"
    r"\s+(\S+\.(?:o|a\([^)]*\)))\s*$"
)


def footprint(map_file: str, groups: dict[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """Flash and RAM bytes per group of input objects, from the linker map.

    ``groups`` maps a name to regular expressions searched in object paths (first match
    wins); everything else falls in "other" (newlib, semihosting, libgcc). Flash = .text +
    .rodata + .data's initial values; RAM = .data + .bss. This is what the library costs on
    the MCU, apart from the stack (measured at run time) and the test harness.
    """
    sizes: dict[str, dict[str, int]] = {g: {"flash": 0, "ram": 0} for g in (*groups, "other")}
    section = None
    with open(map_file) as f:
        lines = f.read().splitlines()
    in_memory_map = False
    for line in lines:
        if line.startswith("Linker script and memory map"):
            in_memory_map = True
            continue
        if not in_memory_map:
            continue
        head = re.match(r"^\s(\.(?:text|rodata|data|bss|vectors|ARM\.exidx)\S*)\s*$", line)
        if head:  # long section names wrap onto the next line
            section = head.group(1)
            continue
        m = _MAP_LINE.match(line)
        if not m:
            section = None
            continue
        name = m.group(1) or section
        section = None
        if name is None:
            continue
        size, obj = int(m.group(3), 16), m.group(4)
        group = next(
            (g for g, keys in groups.items() if any(re.search(k, obj) for k in keys)), "other"
        )
        kind = name.split(".")[1]
        if kind in ("text", "rodata", "vectors", "ARM"):
            sizes[group]["flash"] += size
        elif kind == "data":
            sizes[group]["flash"] += size
            sizes[group]["ram"] += size
        else:
            sizes[group]["ram"] += size
    return sizes
