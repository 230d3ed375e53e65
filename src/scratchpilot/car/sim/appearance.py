"""How the simulated world looks: other road and grass colours, dusk, camera noise.

A pilot that learned the colours of one afternoon leaves the road as soon as the floor or the light
changes. These conditions let the simulator show it, and let training see more than one look.

- **colours**: road, background and grass colours drawn like ``CarRacing``'s own ``domain_randomize``
  (each channel uniform in [0, 210]; the grass is the background with one channel 20 brighter), but from
  a generator seeded by ``(draw, track seed)``: the track's geometry stays exactly the standard one
  (gymnasium draws its colours from the track generator, so its own option would change the track), and
  a training draw never repeats the draw a pilot is tested on.
- **brightness**: the camera image times a factor (dusk: 0.6).
- **noise**: Gaussian camera noise of that standard deviation in grey levels, fresh on every frame.

Camera effects act on the frame the camera delivers, before any preprocessing, exactly where a real
camera's would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the colour draw a pilot is tested on (``--appearance colours``); training recordings use others
TEST_COLOUR_DRAW = 1
#: the colour draw of training recordings (each track still gets its own colours from it)
TRAIN_COLOUR_DRAW = 100


@dataclass(frozen=True)
class Appearance:
    """One look of the simulated world: ``colours`` (a draw number, or None for the standard colours),
    ``brightness`` (a factor on the camera image) and ``noise`` (Gaussian, grey levels)."""

    name: str = "standard"
    colours: int | None = None
    brightness: float = 1.0
    noise: float = 0.0

    def __post_init__(self):
        if self.colours is not None and (isinstance(self.colours, bool) or not isinstance(self.colours, int)
                                         or self.colours < 0):
            raise ValueError(f"appearance {self.name!r}: colours must be a draw number >= 0 or None, "
                             f"got {self.colours!r}")
        if not 0.0 < self.brightness <= 4.0:
            raise ValueError(f"appearance {self.name!r}: brightness must be in (0, 4], got {self.brightness}")
        if not 0.0 <= self.noise <= 255.0:
            raise ValueError(f"appearance {self.name!r}: noise must be in [0, 255] grey levels, got {self.noise}")

    @property
    def changes_camera(self) -> bool:
        return self.brightness != 1.0 or self.noise > 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    # -- the world ---------------------------------------------------------------------------------
    def colours_for(self, track_seed: int) -> dict[str, np.ndarray] | None:
        """The road, background and grass colours (float RGB) of track ``track_seed``, or None."""
        if self.colours is None:
            return None
        rng = np.random.default_rng([self.colours, int(track_seed)])
        road = rng.uniform(0, 210, size=3)
        background = rng.uniform(0, 210, size=3)
        grass = background.copy()
        grass[rng.integers(3)] += 20
        return {"road": road, "background": background, "grass": grass}

    def paint(self, core, track_seed: int) -> bool:
        """Recolour a freshly reset ``CarRacing`` (its road tiles too); True when anything changed."""
        colours = self.colours_for(track_seed)
        if colours is None:
            return False
        core.road_color = colours["road"]
        core.bg_color = colours["background"]
        core.grass_color = colours["grass"]
        for i, tile in enumerate(core.road):
            # CarRacing shades every third tile a little lighter; road_poly holds these same arrays
            tile.color[:] = colours["road"] + 0.01 * (i % 3) * 255
        return True

    # -- the camera --------------------------------------------------------------------------------
    def camera(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame as this camera delivers it: darker or brighter, with noise; uint8 as before."""
        if not self.changes_camera:
            return frame
        image = frame.astype(np.float32)
        if self.brightness != 1.0:
            image *= self.brightness
        if self.noise:
            image += rng.normal(0.0, self.noise, size=image.shape).astype(np.float32)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)


STANDARD = Appearance()
#: the named conditions of ``car drive --sim --appearance``
CONDITIONS: dict[str, Appearance] = {
    "standard": STANDARD,
    "colours": Appearance("colours", colours=TEST_COLOUR_DRAW),
    "dusk": Appearance("dusk", brightness=0.6),
    "noise": Appearance("noise", noise=12.0),
}


#: randomised colours for training recordings (never the test draw)
TRAINING_COLOURS = Appearance("train-colours", colours=TRAIN_COLOUR_DRAW)


def condition(name: str) -> Appearance:
    """The named condition; a ValueError listing the known names otherwise."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown appearance {name!r}; known: {', '.join(CONDITIONS)}") from None
