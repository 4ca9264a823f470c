"""The latency measurement protocol: a frozen dataclass that imports no torch, so that the
command line can build its ``--timing-*`` flags from it (``nasbert query`` stays light)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from nasbert.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a latency is measured."""

    batch: int = 1  # sequences per forward
    seq: int = 128  # tokens per sequence
    threads: int = 0  # 0: as many as torch uses by default
    warmup: int = 5  # untimed forwards before the timed ones
    repeats: int = 20  # timed forwards; the latency is their median
    rounds: int = 3  # profiling measures every subnet this many times, spread over time
    # CPU: flush subnormal floats to zero. GELU tails and small attention weights produce
    # them, and computing on them is slow: up to ~30 % of a forward here, and dependent
    # on the weights and data, which makes latency unpredictable. Deploy with
    # torch.set_flush_denormal(True) to get the measured figures.
    flush_denormal: bool = True
    # the precision models run in; "int8": dynamic int8 quantisation of every linear layer
    # (activations float32; nasbert.quantize), CPU only
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"  # where models are timed (cuda: CUDA events)

    def __post_init__(self) -> None:
        flags = {"batch": 1, "seq": 1, "threads": 0, "warmup": 0, "repeats": 1, "rounds": 1}
        for name, least in flags.items():
            if getattr(self, name) < least:
                raise ConfigError(f"must be at least {least}, not {getattr(self, name)}; "
                                  f"give --timing-{name} {max(least, 1)} or more",
                                  source="latency protocol", field=name)
        if self.dtype == "int8" and self.device != "cpu":
            raise ConfigError("int8 (dynamic quantisation) runs on the CPU; measure it "
                              "with --timing-device cpu", source="latency protocol",
                              field="dtype")

    def resolved(self) -> Protocol:
        if self.threads:
            return self
        import torch

        return dataclasses.replace(self, threads=torch.get_num_threads())
