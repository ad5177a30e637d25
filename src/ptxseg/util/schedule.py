"""The share of positive images per epoch: a constant, a linear ramp or steps, from one string.

The winning SIIM-ACR solution drew positives with a share that fell from 0.8 to 0.4 over
training. `--positive-fraction` (config key `data.positive_fraction`) takes:

- nothing (`None`): the natural share, a plain shuffle;
- `0.5`: the same share every epoch;
- `0.8:0.4`: linear from 0.8 at the first epoch to 0.4 at the last (`trainer.epochs`);
- `0.8@0,0.6@10,0.4@20`: steps, each value from the epoch after its `@` on (the first at 0).

The config checks the text (it cannot import the data layer) and the sampler asks for the value
of each epoch, so both read it here.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("natural", "constant", "linear", "steps")
SYNTAX = (
    "a share between 0 and 1 (0.5), a linear schedule 'start:end' (0.8:0.4, from the first "
    "epoch to the last), or steps 'value@epoch,...' starting at epoch 0 (0.8@0,0.6@10,0.4@20)"
)


@dataclass(frozen=True)
class PositiveFraction:
    """A parsed positive share: `kind` is natural, constant, linear or steps.

    `values` are the shares (one for constant, start and end for linear, one per step) and
    `starts` the first epoch of each step (steps only).
    """

    kind: str = "natural"
    values: tuple[float, ...] = ()
    starts: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: str | float | None) -> PositiveFraction:
        """Read `None`, a number or the text of `--positive-fraction`; ValueError on bad input."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return cls()
        if isinstance(value, bool):
            raise ValueError(f"positive fraction {value!r}: expected {SYNTAX}")
        if isinstance(value, int | float):
            return cls("constant", (_share(value, value),))
        text = str(value).strip()
        if "@" in text:
            values, starts = [], []
            for part in text.split(","):
                share, sep, epoch = part.partition("@")
                if not sep:
                    raise ValueError(f"positive fraction {text!r}: every step needs @; {SYNTAX}")
                values.append(_share(share, text))
                starts.append(_epoch(epoch, text))
            if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
                raise ValueError(
                    f"positive fraction {text!r}: steps must start at epoch 0 and their epochs "
                    f"increase; {SYNTAX}"
                )
            return cls("steps", tuple(values), tuple(starts))
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError(f"positive fraction {text!r}: expected {SYNTAX}")
            return cls("linear", tuple(_share(p, text) for p in parts))
        return cls("constant", (_share(text, text),))

    def at(self, epoch: int, epochs: int) -> float | None:
        """The share of epoch `epoch` (0-based) of a run of `epochs`; None for the natural one."""
        if self.kind == "natural":
            return None
        if self.kind == "constant":
            return self.values[0]
        if self.kind == "linear":
            start, end = self.values
            if epochs <= 1:
                return start
            t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
            return round(start + (end - start) * t, 6)
        current = self.values[0]
        for value, first in zip(self.values, self.starts, strict=True):
            if epoch >= first:
                current = value
        return current

    def shares(self) -> tuple[float, ...]:
        """Every share the schedule can give (to check that the data has both classes)."""
        return self.values

    def describe(self) -> str:
        if self.kind == "natural":
            return "natural share"
        if self.kind == "constant":
            return f"{self.values[0]:g}"
        if self.kind == "linear":
            return f"linear {self.values[0]:g} -> {self.values[1]:g}"
        return ", ".join(
            f"{v:g} from epoch {s}" for v, s in zip(self.values, self.starts, strict=True)
        )


def _share(text, whole) -> float:
    try:
        share = float(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"positive fraction {whole!r}: {text!r} is not a number; {SYNTAX}"
        ) from None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"positive fraction {whole!r}: {share:g} is not in [0, 1]; {SYNTAX}")
    return share


def _epoch(text, whole) -> int:
    try:
        epoch = int(str(text).strip())
    except ValueError:
        raise ValueError(
            f"positive fraction {whole!r}: epoch {text!r} is not a whole number"
        ) from None
    if epoch < 0:
        raise ValueError(f"positive fraction {whole!r}: epoch {epoch} is negative")
    return epoch
