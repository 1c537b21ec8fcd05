"""PyTorch's CPU random draws for a freshly seeded `torch.Generator`, reproduced on the
host in numpy, bit for bit, without torch.

timm's LR noise seeds a new generator for every step (`manual_seed(noise_seed + t)`)
and draws one or a few values from it, so a draw is a pure function of `(seed, t)`.
PyTorch's CPU generator is `std::mt19937` seeded with the low 32 bits of the seed, the
same seeding as numpy's legacy `RandomState.seed(int)`; a full-range `uint32` `randint`
returns the engine's raw outputs. On top of them PyTorch builds (ATen's
`core/DistributionsHelper.h`, `core/TransformationHelper.h`):
  * `torch.rand(1)` (float32): the low 24 bits of one output, times 2**-24;
  * `torch.randn(1)` (float32): Box-Muller in float64 on two 53-bit uniforms (each from
    two outputs, the first the high word), `r * cos(theta)` rounded to float32, and
    `r * sin(theta)` kept for the next `randn` call on the same generator.
`tools/check_timm_reference.py` compares these with torch itself.
"""

from __future__ import annotations

import math

import numpy as np

_MASK_53 = (1 << 53) - 1


class TorchCPUGenerator:
    """The draws of `torch.Generator().manual_seed(seed)` (CPU), one by one.

    Examples:
      >>> g = TorchCPUGenerator(42)     # torch.Generator().manual_seed(42)
      >>> round(g.randn(), 4)           # torch.randn(1, generator=g).item()
      0.3367
    """

    def __init__(self, seed: int, engine: np.random.RandomState | None = None):
        # `engine`: one to reseed (a new RandomState costs ~100 us, a reseed ~5 us).
        self._engine = engine or np.random.RandomState()
        self._engine.seed(seed & 0xFFFFFFFF)  # mt19937's init_genrand, as PyTorch's
        self._cached_normal: float | None = None
        self._outputs: list[int] = []  # drawn ahead, in reverse: the next one is last

    def _next(self) -> int:
        """The engine's next raw 32-bit output (fetched 8 at a time: one call ~2 us)."""
        if not self._outputs:
            ahead = self._engine.randint(0, 2**32, size=8, dtype=np.uint32)
            self._outputs = ahead[::-1].tolist()
        return self._outputs.pop()

    def _uniform53(self) -> float:
        high = self._next()
        return ((high << 32 | self._next()) & _MASK_53) * 2.0**-53

    def rand(self) -> float:
        """`torch.rand(1, generator=g).item()`: float32 uniform in [0, 1)."""
        return (self._next() & 0xFFFFFF) * 2.0**-24

    def randn(self) -> float:
        """`torch.randn(1, generator=g).item()`: float32 standard normal."""
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1 = self._uniform53()
        u2 = self._uniform53()
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = float(np.float32(r * math.sin(theta)))
        return float(np.float32(r * math.cos(theta)))


def timm_noise(
    seed: int, noise_pct: float, noise_std: float, noise_type: str,
    engine: np.random.RandomState | None = None,
) -> float:  # fmt: skip
    """timm's `Scheduler._calculate_noise` for the generator seeded with `seed`
    (`noise_seed + t`): a normal draw times `noise_std`, drawn again until its magnitude
    is below `noise_pct`, or a uniform draw in `[-noise_pct, noise_pct)`."""
    generator = TorchCPUGenerator(seed, engine)
    if noise_type == "normal":
        while True:
            noise = generator.randn() * noise_std
            if abs(noise) < noise_pct:
                return noise
    return 2 * (generator.rand() - 0.5) * noise_pct


def timm_noise_table(
    first: int, end: int, noise_seed: int, noise_pct: float, noise_std: float, noise_type: str
) -> np.ndarray:
    """`timm_noise(noise_seed + t, ...)` for `t` in `[first, end)`, float64, shape
    `(max(0, end - first),)`."""
    engine = np.random.RandomState()
    draws = [
        timm_noise(noise_seed + t, noise_pct, noise_std, noise_type, engine)
        for t in range(first, end)
    ]
    return np.array(draws, dtype=np.float64)
