"""Which steps a watch observes: every step where that costs little, one block of steps in 2**k where steps
are short.

Observing a step costs about the same whatever the step does: each hooked region (a DataLoader wait, a
forward, a backward, an optimizer step) is a few microseconds on the training thread, and its span and the
gap before it cost the stack sampler and the writer a few more. On a 100 ms step that is nothing; on a 3 ms
step of a small model it is 2%. So the watch estimates what observing costs per step (`COST_PER_STEP_NS +
regions * COST_PER_REGION_NS`) against the step's own length, and where that exceeds `OVERHEAD_TARGET` it
observes one block in 2**k, with k the smallest that brings the estimate under it.

A block is 2**b consecutive steps lasting at least `BLOCK_MIN_NS` (one step where steps are that long). The
stack sampler sleeps through unobserved blocks and is woken as an observed one starts; a lone 3 ms step
would be over before it got the GIL (a thread waits up to the 5 ms switch interval for it), a block of 100 ms
is sampled like any stretch of the job.

In a step it does not observe, the watch emits only the step's own span (attrs `{"observed": false}`) and
checkpoint writes; the other hooks return at once and the stack sampler takes no stack. The budget engine
splits such a step's time as the observed steps split theirs (`gpuwatch.attribution.budget`).

Which blocks: `observed(block, k)` picks them by the golden-ratio sequence (the top k bits of `block *
2**32 / phi`, mod 2**32, are zero): one in 2**k, spread evenly, in no period a loop could share (a
checkpoint every 4 steps, a slow batch every 8). Ranks with the same block length and k observe the same
steps, so a collective is observed on all its ranks or on none; a rank with a larger k observes a subset of
what a rank with a smaller k does.
"""

from __future__ import annotations

OVERHEAD_TARGET = 0.001
"""What observing may cost, as a share of the step time (0.1%). The rest of the watch's 0.5% budget goes to
what it costs whether a step is observed or not, measured in a watched loop of 6 ms steps (benchmarks/
overhead.py --loop small, 3000 steps, each thread's CPU from schedstat, 2-core VM): the writer 0.12-0.13% of
a core, the /proc sampler 0.07-0.09%, the stack sampler's wake-ups outside observed steps, and 4-6 us per
unobserved step on the training thread (0.07-0.09%). With 0.2% here the total came to 0.65-0.75%."""
COST_PER_REGION_NS = 13_000
"""Cost of one hooked region on the training thread plus its span, its gap's span, the sampler's drain and the
writer's encoding (benchmarks/overhead.py's small loop, observed in every step: 21-45 us on the training
thread and 41 us in gpuwatch's threads per step of 5-6 regions, 2-core VM)."""
COST_PER_STEP_NS = 6_000
"""Cost of `gw.step()` in an observed step (its span, the boundary's checks), 3-5 us on the same machine."""
FULL_STEPS = 64
"""The first steps are all observed: module discovery, warm-up detection and the first signatures of the stack
sampler happen there, and a short run (a test, a smoke run of a config) is observed whole."""
BLOCK_MIN_NS = 100_000_000
"""Shortest observed stretch, in ns: about five ticks of the stack sampler at its default 50 Hz."""
MAX_BLOCK_SHIFT = 10
"""At most 1024 steps to a block."""
REPACE_EVERY = 64
"""Steps between two choices of k and b (a step time that drifts does not flip them every step); a choice
takes effect at the next block boundary."""
MAX_SHIFT = 6
"""At the thinnest, one block in 64 is observed: fewer, and work that happens in some steps only is seen too
seldom."""
_PHI_32 = 0x9E3779B9
"""2**32 divided by the golden ratio, rounded to odd."""


def observed(block: int, shift: int) -> bool:
    """Is `block` one of the blocks observed at one in 2**shift?"""
    if shift <= 0:
        return True
    return ((block * _PHI_32) & 0xFFFFFFFF) >> (32 - shift) == 0


class StepPacer:
    """Chooses k and b from the steps as they close (training thread; plain arithmetic, no allocation).

    Args:
        enabled: False observes every step (`WatchConfig.observe_every_step`).
    """

    __slots__ = ("enabled", "shift", "block_shift", "_step_ns", "_regions", "_since", "_next")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.shift = 0
        """Blocks are observed one in 2**shift."""
        self.block_shift = 0
        """Blocks are 2**block_shift steps."""
        self._step_ns = 0.0  # moving average of the step time
        self._regions = 0.0  # moving average of hooked regions per observed step
        self._since = 0
        self._next: tuple[int, int] | None = None  # (shift, block_shift) chosen, for the next block boundary

    @property
    def step_ns(self) -> int:
        """The moving average of the step time, in ns (0 before the first step)."""
        return int(self._step_ns)

    def next_observed(self, closed: int, step_ns: int, regions: int, was_observed: bool) -> bool:
        """After step `closed` took `step_ns` with `regions` hooked regions (counted if `was_observed`):
        is step `closed + 1` observed?"""
        if not self.enabled:
            return True
        self._step_ns = step_ns if self._step_ns == 0.0 else 0.9 * self._step_ns + 0.1 * step_ns
        if was_observed:
            self._regions = regions if self._regions == 0.0 else 0.9 * self._regions + 0.1 * regions
        nxt = closed + 1
        if nxt < FULL_STEPS:
            return True
        self._since += 1
        if self._since >= REPACE_EVERY or nxt == FULL_STEPS:
            self._since = 0
            self._next = (shift_for(self._step_ns, self._regions), block_shift_for(self._step_ns))
        if self._next is not None:
            shift, block_shift = self._next
            if nxt & ((1 << max(block_shift, self.block_shift)) - 1) == 0:  # a boundary of old and new blocks
                self.shift, self.block_shift = shift, block_shift
                self._next = None
        return observed(nxt >> self.block_shift, self.shift)


def block_shift_for(step_ns: float) -> int:
    """The smallest b whose 2**b steps of `step_ns` last `BLOCK_MIN_NS`."""
    b = 0
    while b < MAX_BLOCK_SHIFT and step_ns * (1 << b) < BLOCK_MIN_NS:
        b += 1
    return b


def shift_for(step_ns: float, regions: float) -> int:
    """The smallest k whose one-in-2**k observation costs at most `OVERHEAD_TARGET` of `step_ns`."""
    cost = COST_PER_STEP_NS + regions * COST_PER_REGION_NS
    allowed = OVERHEAD_TARGET * step_ns
    shift = 0
    while shift < MAX_SHIFT and cost > allowed * (1 << shift):
        shift += 1
    return shift
