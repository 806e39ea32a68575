"""`--temperature-schedule INITIAL:FINAL:WARMUP_STEPS`: the sampling temperature of RL rollouts moves linearly from
INITIAL to FINAL over the first WARMUP_STEPS RL steps, then stays at FINAL (the workflow recipe's 0.5 -> 0.15 over
150 steps: explore first, then sharpen).

The value is a pure function of the RL step, counted from the first RL step after any SFT epochs, so a resumed run
(kill -9 included) samples its next step at exactly the temperature an uninterrupted run would have used; nothing
about the schedule needs to be saved. Evaluations keep `--temperature`, so they stay comparable across the run.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TEMPERATURE = 10.0


@dataclass(frozen=True)
class TemperatureSchedule:
    initial: float
    final: float
    warmup_steps: int

    @classmethod
    def parse(cls, text: str) -> TemperatureSchedule:
        """'0.5:0.15:150' -> the schedule; ValueError naming the flag and what is wrong otherwise."""
        flag = "--temperature-schedule"
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{flag} {text!r}: expected INITIAL:FINAL:WARMUP_STEPS, e.g. 0.5:0.15:150")
        try:
            initial, final, warmup = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"{flag} {text!r}: INITIAL and FINAL must be numbers, WARMUP_STEPS a whole number"
                             ) from None
        for value in (initial, final):
            if not 0 <= value <= MAX_TEMPERATURE:
                raise ValueError(f"{flag} {text!r}: temperatures must be between 0 and {MAX_TEMPERATURE:g}")
        if warmup < 1:
            raise ValueError(f"{flag} {text!r}: WARMUP_STEPS must be at least 1")
        return cls(initial, final, warmup)

    def at(self, rl_step: int) -> float:
        """Temperature of RL step `rl_step` (1 = the first RL step): INITIAL there, FINAL from step
        WARMUP_STEPS + 1 on."""
        progress = min(max(rl_step - 1, 0) / self.warmup_steps, 1.0)
        return self.initial + (self.final - self.initial) * progress
