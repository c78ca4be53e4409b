"""Which Compute Engine machines each GPU attaches to on Vertex AI: the one table that the
compiled custom job and tuning trials, the serving settings and the emulator read.

Vertex AI refuses any other pairing with INVALID_ARGUMENT (Google's "Configure compute
resources" and GPU platform pages): T4, P4, P100 and V100 attach to N1 machines (1, 2, 4 or 8
of them, as the GPU allows), L4 to G2, A100 to A2, H100 to A3, and a G2, A2 or A3 machine
comes with its own number of GPUs. Plain Python, no SDK: a CLI's ``--help`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """Machines of one family for one GPU: ``counts`` GPUs on a machine named ``prefix*``
    (N1), or ``machines``: name -> the GPUs it comes with (G2, A2, A3)."""

    name: str
    prefix: str
    counts: tuple[int, ...] = ()
    machines: tuple[tuple[str, int], ...] = ()
    default: str = ""

    def allows(self, machine_type: str, count: int) -> bool:
        if self.machines:
            return dict(self.machines).get(machine_type) == count
        return machine_type.startswith(self.prefix) and count in self.counts

    def valid(self) -> str:
        if self.machines:
            return ", ".join(f"{name} ({count})" for name, count in self.machines)
        return f"{self.prefix}* ({' '.join(map(str, self.counts))})"


_N1 = "N1"
GPU_FAMILIES: dict[str, Family] = {
    "NVIDIA_TESLA_T4": Family(_N1, "n1-", (1, 2, 4), default="n1-standard-8"),
    "NVIDIA_TESLA_P4": Family(_N1, "n1-", (1, 2, 4), default="n1-standard-8"),
    "NVIDIA_TESLA_P100": Family(_N1, "n1-", (1, 2, 4), default="n1-standard-8"),
    "NVIDIA_TESLA_V100": Family(_N1, "n1-", (1, 2, 4, 8), default="n1-standard-8"),
    "NVIDIA_L4": Family(
        "G2",
        "g2-",
        machines=(
            ("g2-standard-4", 1),
            ("g2-standard-8", 1),
            ("g2-standard-12", 1),
            ("g2-standard-16", 1),
            ("g2-standard-32", 1),
            ("g2-standard-24", 2),
            ("g2-standard-48", 4),
            ("g2-standard-96", 8),
        ),
        default="g2-standard-8",
    ),
    "NVIDIA_TESLA_A100": Family(
        "A2",
        "a2-highgpu-",
        machines=(
            ("a2-highgpu-1g", 1),
            ("a2-highgpu-2g", 2),
            ("a2-highgpu-4g", 4),
            ("a2-highgpu-8g", 8),
            ("a2-megagpu-16g", 16),
        ),
    ),
    "NVIDIA_A100_80GB": Family(
        "A2 ultra",
        "a2-ultragpu-",
        machines=(
            ("a2-ultragpu-1g", 1),
            ("a2-ultragpu-2g", 2),
            ("a2-ultragpu-4g", 4),
            ("a2-ultragpu-8g", 8),
        ),
    ),
    "NVIDIA_H100_80GB": Family(
        "A3",
        "a3-highgpu-",
        machines=(
            ("a3-highgpu-1g", 1),
            ("a3-highgpu-2g", 2),
            ("a3-highgpu-4g", 4),
            ("a3-highgpu-8g", 8),
        ),
    ),
    "NVIDIA_H100_MEGA_80GB": Family("A3 mega", "a3-megagpu-", machines=(("a3-megagpu-8g", 8),)),
}
DEFAULT_CPU_MACHINE = "n1-standard-8"
"""A job's machine without a GPU: 8 vCPUs and 30 GB, the plain train step's limits."""
_GPU_ONLY = tuple(sorted({f.prefix for f in GPU_FAMILIES.values() if f.machines}))


def machine_problem(machine_type: str, accelerator_type: str, accelerator_count: int) -> str | None:
    """What Vertex AI would refuse in this machine and GPU pairing, in one line; None if fine."""
    if not accelerator_type or accelerator_count == 0:
        if machine_type.startswith(_GPU_ONLY):
            return f"machine {machine_type} comes with GPUs: name its accelerator type and count"
        return None
    family = GPU_FAMILIES.get(accelerator_type)
    if family is None:
        return f"unknown accelerator type {accelerator_type!r}; known: {', '.join(GPU_FAMILIES)}"
    if family.allows(machine_type, accelerator_count):
        return None
    return (
        f"{accelerator_count} x {accelerator_type} cannot attach to {machine_type}: it needs "
        f"{family.name} machines, {family.valid()} GPUs"
    )


def machine_for(accelerator_type: str, accelerator_count: int) -> str:
    """The machine a job gets that names none: the family's default, or its smallest machine
    that comes with ``accelerator_count`` GPUs; ValueError when there is none."""
    if not accelerator_type or accelerator_count == 0:
        return DEFAULT_CPU_MACHINE
    family = GPU_FAMILIES.get(accelerator_type)
    if family is None:
        raise ValueError(machine_problem("", accelerator_type, accelerator_count))
    fitting = [name for name, count in family.machines if count == accelerator_count]
    if family.default and family.allows(family.default, accelerator_count):
        return family.default
    if not fitting:
        raise ValueError(
            f"no machine takes {accelerator_count} x {accelerator_type}: {family.name} "
            f"machines, {family.valid()} GPUs"
        )
    return fitting[0]


def check_machine(machine_type: str, accelerator_type: str, accelerator_count: int) -> None:
    """ValueError (one line) for a pairing Vertex AI refuses."""
    if problem := machine_problem(machine_type, accelerator_type, accelerator_count):
        raise ValueError(problem)


def table() -> str:
    """The table as text, for ``--help``."""
    return "\n".join(
        f"  {gpu:<22} {family.name:<9} {family.valid()}" for gpu, family in GPU_FAMILIES.items()
    )
