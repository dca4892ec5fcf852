"""PyTorch's own compilers against eager mode: are TorchScript or ``torch.compile`` worth a runtime of their own?

    python -m bench.torch_variants            # network only, one 640 x 640 chip, medians of 30 runs

Times the shipped network (Conv and BatchNorm fused, channels-last input, as ``app.detection.runtimes.TorchEngine``
runs it) eager, traced and frozen TorchScript with ``torch.jit.optimize_for_inference``, and ``torch.compile``
(inductor, needs a C++ compiler), with the largest output difference from eager. Variants are timed one after
another in blocks, eager again last, so a drift shows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from bench.perf import WEIGHTS, median_ms, synthetic_chips


def main() -> None:
    """Print each variant's median network latency, its ratio to eager and its largest output difference."""
    import torch

    from app.detection.runtimes import TorchEngine, to_input

    threads = len(os.sched_getaffinity(0))
    engine = TorchEngine(WEIGHTS, threads)
    torch.set_num_threads(threads)
    x = torch.from_numpy(to_input([np.ascontiguousarray(synthetic_chips(1)[0].image[..., ::-1])]))
    x = x.contiguous(memory_format=torch.channels_last)

    class FirstOutput(torch.nn.Module):
        """The raw prediction tensor alone (tracing needs plain tensor outputs)."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = self.model(t)
            return out[0] if isinstance(out, (tuple, list)) else out

    eager = FirstOutput(engine.model).eval()
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"eager": eager}
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(eager, x, check_trace=False).eval())
        variants["TorchScript (frozen, optimize_for_inference)"] = torch.jit.optimize_for_inference(traced)
        t0 = time.perf_counter()
        variants["torch.compile (inductor)"] = torch.compile(eager)
        variants["torch.compile (inductor)"](x)
        print(f"torch.compile: first call (compilation) {time.perf_counter() - t0:.0f} s")
    with torch.inference_mode():
        reference = eager(x)
        for name, fn in [*variants.items(), ("eager, again", eager)]:
            for _ in range(3):
                out = fn(x)
            ms = median_ms(lambda fn=fn: fn(x), 30)[0]
            if name == "eager":
                base = ms
            diff = float((out - reference).abs().max())
            print(f"{name:48s} {ms:6.1f} ms   speed-up over eager {base / ms:4.2f}x   max |output diff| {diff:.2g}")


if __name__ == "__main__":
    main()
