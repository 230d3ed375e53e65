"""The one vehicle loop: small parts with named inputs and outputs, run in order every tick.

As in donkeycar's vehicle loop, a part is any object with ``run(*inputs)``; the loop reads the part's
inputs from a shared memory of named values, calls it, and writes what it returns under its output
names. A new sensor, pilot or car link is one new part, never a new loop::

    car = Vehicle()
    car.add(SimFrames(sim), outputs=("image", "frame_time", "end"))
    car.add(PilotPart(pilot), inputs=("image",), outputs=("label", "confidence"), run_if="image")
    car.add(safety, inputs=("label", "confidence", "frame_time"), outputs=("sent", "stop"), run_if="image")
    car.run()

The simulator (:mod:`.sim.runs`), keyboard recording and network driving on the real car
(:mod:`.commands.record`, :mod:`.commands.drive`) all build one of these. Every part's run time is
measured on every tick it runs (the pilot's is the decide latency).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: a part that returns a truthy value under this name ends the run after the current tick
END = "end"


@dataclass
class _Entry:
    part: Any
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run_if: str | None


def percentiles(values, *quantiles: float) -> dict[str, float | None]:
    """``{"p50": ..., "p99": ..., "max": ...}`` of ``values`` (None for each when there are none)."""
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": None for q in quantiles} | {"max": None}
    result = {f"p{q:g}": round(float(np.percentile(data, q)), 4) for q in quantiles}
    return result | {"max": round(float(data.max()), 4)}


@dataclass
class VehicleRun:
    """What one :meth:`Vehicle.run` did: ticks, wall seconds, why it ended, each part's run times (ms)."""

    ticks: int = 0
    seconds: float = 0.0
    ended: str | None = None
    part_ms: dict[str, deque] = field(default_factory=dict)

    @property
    def loop_hz(self) -> float:
        return self.ticks / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "seconds": round(self.seconds, 3), "loop_hz": round(self.loop_hz, 1),
                "ended": self.ended, "part_ms": {name: percentiles(ms, 50, 99) for name, ms in self.part_ms.items()}}


class Vehicle:
    """Parts run in the order they were added; :attr:`memory` holds every named value between ticks."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.memory: dict[str, Any] = {}

    def add(self, part, inputs: Sequence[str] = (), outputs: Sequence[str] = (), *, run_if: str | None = None,
            name: str | None = None) -> Vehicle:
        """Add ``part``: ``part.run(*memory[inputs])`` each tick, its result stored under ``outputs``.

        With ``run_if``, the part runs only on ticks where that value is not None; otherwise its outputs
        are set to None (a pilot with no new frame decides nothing).
        """
        if not callable(getattr(part, "run", None)):
            raise TypeError(f"a part needs a run() method; {type(part).__name__} has none")
        name = name or type(part).__name__
        if any(entry.name == name for entry in self.entries):
            raise ValueError(f"two parts are named {name!r}; pass name=... to tell them apart")
        self.entries.append(_Entry(part, name, tuple(inputs), tuple(outputs), run_if))
        return self

    def tick(self, timings: dict[str, deque] | None = None) -> None:
        """Run every part once."""
        memory = self.memory
        for entry in self.entries:
            if entry.run_if is not None and memory.get(entry.run_if) is None:
                for output in entry.outputs:
                    memory[output] = None
                continue
            started = time.perf_counter()
            result = entry.part.run(*[memory.get(name) for name in entry.inputs])
            if timings is not None:
                timings[entry.name].append((time.perf_counter() - started) * 1000)
            if len(entry.outputs) == 1:
                result = (result,)
            elif entry.outputs and (not isinstance(result, tuple) or len(result) != len(entry.outputs)):
                raise TypeError(f"part {entry.name} should return {len(entry.outputs)} values "
                                f"{entry.outputs}, got {type(result).__name__}")
            for output, value in zip(entry.outputs, result or (), strict=False):
                if output == END and not value:
                    continue  # several parts may end the run: one part's "not yet" never cancels another's end
                memory[output] = value

    def run(self, *, max_ticks: int | None = None, rate_hz: float | None = None) -> VehicleRun:
        """Tick until a part outputs :data:`END` (or ``max_ticks``), at most ``rate_hz`` ticks a second."""
        run = VehicleRun(part_ms={entry.name: deque(maxlen=100_000) for entry in self.entries})
        period = 1.0 / rate_hz if rate_hz else 0.0
        self.memory[END] = None
        started = next_tick = time.perf_counter()
        try:
            while max_ticks is None or run.ticks < max_ticks:
                self.tick(run.part_ms)
                run.ticks += 1
                if self.memory.get(END):
                    run.ended = str(self.memory[END])
                    break
                if period:
                    next_tick += period
                    pause = next_tick - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        next_tick = time.perf_counter()
            else:
                run.ended = "max ticks"
        finally:
            run.seconds = time.perf_counter() - started
        return run
