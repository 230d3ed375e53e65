"""The simulated car: gymnasium's ``CarRacing-v3`` as a camera and a car link.

:class:`Simulator` is both ends of the car for the vehicle loop: ``read()`` returns the latest 96x96
observation and its simulated time, and it implements :class:`~scratchpilot.car.links.CarLink`
(``drive(label)`` advances the simulation by one frame, 1/50 s, with that command), so the same loop and
the same safety gate drive the simulator or the real car (a camera stream and the serial link).

The environment is the stock ``CarRacing-v3`` with discrete actions and its default 1000-step limit.
Two speed options leave its physics untouched:

* ``render_frames=False`` skips drawing the observation altogether (the scripted expert reads the
  car's state, not pixels), which makes a step about a hundred times cheaper;
* ``fast_render=True`` (the default) draws the same picture as gymnasium, pixel for pixel, but culls
  the off-screen grass and road polygons with NumPy instead of a Python loop over all of them.

gymnasium and pygame are imported when an environment is made, never at import time.
"""

from __future__ import annotations

import os
import types
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..links import check_label

#: Label -> ``CarRacing-v3`` discrete action. The env's own order is 0 = do nothing, 1 = steer right,
#: 2 = steer left, 3 = gas, 4 = brake (``CarRacing.step``: ``steer(-0.6 * (a == 1) + 0.6 * (a == 2))``,
#: ``gas(0.2 * (a == 3))``, ``brake(0.8 * (a == 4))``).
LABEL_TO_ACTION: dict[str, int] = {"none": 0, "forward": 3, "left": 2, "right": 1, "brake": 4}
ACTION_TO_LABEL: dict[int, str] = {action: label for label, action in LABEL_TO_ACTION.items()}

ENV_ID = "CarRacing-v3"
FPS = 50  #: simulation frames per second (``car_racing.FPS``)
MAX_EPISODE_STEPS = 1000  #: gymnasium's registered limit for CarRacing-v3, kept as is
FRAME_SHAPE = (96, 96, 3)
#: Rows at the bottom of a 96x96 frame that hold the black indicator bar (speed, ABS, steering, gyro
#: and the score); a pilot crops them so that it cannot read the answer from the dashboard.
INDICATOR_BAR_ROWS = 12


def label_to_action(label: str) -> int:
    """Map a label from :data:`LABELS` to the env's discrete action; a clear ValueError otherwise."""
    return LABEL_TO_ACTION[check_label(label)]


@dataclass
class EpisodeMetrics:
    """What one episode achieved.

    ``score`` is the sum of the env's rewards (+1000/N per new tile, -0.1 per frame, -100 for leaving
    the playfield). ``off_track_steps`` counts frames after which no wheel touched a road tile.
    """

    seed: int | None
    score: float = 0.0
    steps: int = 0
    tiles_visited: int = 0
    tiles_total: int = 0
    off_track_steps: int = 0
    lap_completed: bool = False
    out_of_playfield: bool = False
    truncated: bool = False

    @property
    def tiles_visited_pct(self) -> float:
        return 100.0 * self.tiles_visited / self.tiles_total if self.tiles_total else 0.0

    @property
    def done(self) -> bool:
        return self.lap_completed or self.out_of_playfield or self.truncated

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tiles_visited_pct": round(self.tiles_visited_pct, 2)}


def make_env(seed: int | None = None, *, render_frames: bool = True, fast_render: bool = True):
    """Create ``CarRacing-v3`` with discrete actions, headless, and reset it to track ``seed``.

    Parameters
    ----------
    seed : int or None
        Track seed passed to the first ``reset``; None leaves the env un-reset.
    render_frames : bool
        False skips drawing observations: ``step`` then returns None instead of a frame.
    fast_render : bool
        Draw observations with the vectorised road painter (same pixels, about twice as fast).

    Returns
    -------
    gymnasium.Env
        The wrapped env (TimeLimit of 1000 steps); ``env.unwrapped`` is the ``CarRacing`` instance.
    """
    # pygame opens no window for state pixels, but SDL still wants a video driver on a headless host.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    try:
        import gymnasium as gym
        from gymnasium.envs.box2d import car_racing
    except ImportError as exc:
        raise ImportError(
            f"the car simulator needs gymnasium[box2d] ({exc}); install it with: pip install -e '.[car]'"
        ) from exc

    env = gym.make(ENV_ID, continuous=False, render_mode=None, max_episode_steps=MAX_EPISODE_STEPS,
                   disable_env_checker=not render_frames)
    core = env.unwrapped
    if not render_frames:
        # CarRacing.step always renders "state_pixels"; an instance attribute shadows the method.
        core._render = types.MethodType(_render_nothing, core)
    elif fast_render:
        core._render_road = _RoadPainter(core, car_racing)
    if seed is not None:
        env.reset(seed=seed)
    return env


def _render_nothing(self, mode: str) -> None:
    return None


class _RoadPainter:
    """Draws what ``CarRacing._render_road`` draws, in the same order with the same pygame calls.

    gymnasium transforms and bounds-checks every one of its ~800 background, grass and road polygons
    in Python each frame, although only a few dozen are on screen. Here all vertices live in one
    ``(P, 4, 2)`` array, so the transform and the cull are a handful of NumPy operations; only the
    visible polygons reach ``gfxdraw``, with the same float coordinates and colours as before.
    """

    def __init__(self, core, car_racing_module):
        self.core = core
        self.window_w = car_racing_module.WINDOW_W
        self.window_h = car_racing_module.WINDOW_H
        self.margin = car_racing_module.MAX_SHAPE_DIM
        bounds = car_racing_module.PLAYFIELD
        self.field = np.array([[(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]])
        g = car_racing_module.GRASS_DIM
        self.grass = np.array([[(g * x + g, g * y), (g * x, g * y), (g * x, g * y + g), (g * x + g, g * y + g)]
                               for x in range(-20, 20, 2) for y in range(-20, 20, 2)], dtype=np.float64)
        self._road_of: list | None = None  # the road_poly list the cache below was built from
        self._road_vertices = np.zeros((0, 4, 2))

    def _refresh_road(self) -> None:
        road_poly = self.core.road_poly
        if road_poly is self._road_of and len(self._road_vertices) == len(road_poly):
            return
        if any(len(poly) != 4 for poly, _ in road_poly):
            raise RuntimeError("CarRacing road polygons are no longer quadrilaterals; use fast_render=False")
        self._road_vertices = np.array([[(p[0], p[1]) for p in poly] for poly, _ in road_poly],
                                       dtype=np.float64).reshape(-1, 4, 2)
        self._road_of = road_poly

    def _to_screen(self, vertices: np.ndarray, zoom: float, translation, angle: float) -> np.ndarray:
        import pygame

        # pygame's own rotation of the unit vector yields exactly the cos/sin that Vector2.rotate_rad
        # uses for every vertex (including its special cases at multiples of 90 degrees).
        cos, sin = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        x, y = vertices[..., 0], vertices[..., 1]
        return np.stack([(cos * x - sin * y) * zoom + translation[0],
                         (sin * x + cos * y) * zoom + translation[1]], axis=-1)

    def _visible(self, screen: np.ndarray) -> np.ndarray:
        m = self.margin
        inside = ((screen[..., 0] >= -m) & (screen[..., 0] <= self.window_w + m)
                  & (screen[..., 1] >= -m) & (screen[..., 1] <= self.window_h + m))
        return np.flatnonzero(inside.any(axis=1))

    def __call__(self, zoom: float, translation, angle: float) -> None:
        from pygame import gfxdraw

        core = self.core
        surf = core.surf
        self._refresh_road()

        def draw(points: np.ndarray, color) -> None:
            poly = [tuple(p) for p in points.tolist()]
            gfxdraw.aapolygon(surf, poly, color)
            gfxdraw.filled_polygon(surf, poly, color)

        draw(self._to_screen(self.field, zoom, translation, angle)[0], core.bg_color)
        grass = self._to_screen(self.grass, zoom, translation, angle)
        for i in self._visible(grass):
            draw(grass[i], core.grass_color)
        if len(self._road_vertices):
            road = self._to_screen(self._road_vertices, zoom, translation, angle)
            for i in self._visible(road):
                # read the colour each frame: touching a tile recolours it in place (FrictionDetector)
                draw(road[i], [int(c) for c in core.road_poly[i][1]])


class Simulator:
    """One ``CarRacing-v3`` track: a frame source (``read``) and a :class:`~scratchpilot.car.links.CarLink`.

    Parameters
    ----------
    seed : int
        Track seed (the same seed gives the same track and the same physics).
    render_frames : bool
        False for state-only driving (the scripted expert): ``read()`` then raises.
    fast_render : bool
        See :func:`make_env`.
    appearance : Appearance, optional
        How the world and the camera look (:mod:`.appearance`): other colours, dusk, noise. The track
        and the physics stay those of ``seed``.

    Examples
    --------
    A pilot loop::

        with Simulator(seed=0) as sim:
            while not sim.done:
                frame, t = sim.read()
                sim.drive(pilot(frame))
            print(sim.metrics.to_dict())
    """

    def __init__(self, seed: int, *, render_frames: bool = True, fast_render: bool = True, appearance=None):
        from .appearance import STANDARD

        self.render_frames = render_frames
        self.appearance = appearance or STANDARD
        self._latched = False
        self.problem: str | None = None
        self.stats: dict[str, int] = {"commands": 0, "holds": 0}
        self.env = make_env(None, render_frames=render_frames, fast_render=fast_render)
        self.reset(seed)

    # -- state -------------------------------------------------------------------------------------
    @property
    def core(self):
        """The unwrapped ``CarRacing`` instance (track, car, tiles)."""
        return self.env.unwrapped

    @property
    def car(self):
        """The Box2D car: ``car.hull.position/angle/linearVelocity``, ``car.wheels[i].tiles``."""
        return self.core.car

    @property
    def track(self) -> np.ndarray:
        """Centre line, ``(N, 4)`` float64 rows of ``(alpha, beta, x, y)``; tile ``i`` ends at row ``i``."""
        return np.asarray(self.core.track, dtype=np.float64)

    @property
    def time(self) -> float:
        """Simulated seconds since the episode started (steps / FPS)."""
        return self.metrics.steps / FPS

    @property
    def done(self) -> bool:
        """True once the lap is completed, the car left the playfield, time ran out or stop() was called."""
        return self.metrics.done or self._stopped

    def on_track(self) -> bool:
        """Whether at least one wheel touches a road tile."""
        return any(wheel.tiles for wheel in self.car.wheels)

    # -- episode -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray | None:
        """Start a new episode on track ``seed`` (default: the current seed); return the first frame."""
        if seed is not None:
            self.seed = int(seed)
        self._frame, _ = self.env.reset(seed=self.seed)
        if self.appearance.paint(self.core, self.seed) and self.render_frames:
            self._frame = self.core._render("state_pixels")  # the first frame, in the new colours
        # camera noise: its own stream per track, so a run repeats exactly
        self._camera_rng = np.random.default_rng([self.seed, 7])
        self._camera_frame, self._camera_frame_step = None, -1
        self._stopped = False
        self.metrics = EpisodeMetrics(seed=self.seed, tiles_total=len(self.core.track))
        return self._frame

    def read(self) -> tuple[np.ndarray, float]:
        """Return the current observation ``(96, 96, 3)`` uint8 and the simulated time in seconds."""
        if not self.render_frames:
            raise RuntimeError("this Simulator was created with render_frames=False, so it has no frames")
        if self.appearance.changes_camera:
            if self._camera_frame_step != self.metrics.steps:  # one camera image per simulated frame
                self._camera_frame = self.appearance.camera(self._frame, self._camera_rng)
                self._camera_frame_step = self.metrics.steps
            return self._camera_frame, self.time
        return self._frame, self.time

    def send(self, label: str) -> float:
        """Drive one frame with ``label``; return that frame's reward.

        Raises
        ------
        ValueError
            For a label not in :data:`LABELS`.
        RuntimeError
            When the episode is already over (check :attr:`done`).
        """
        action = label_to_action(label)
        if self.done:
            raise RuntimeError(f"the episode on track {self.seed} is over; call reset() before send()")
        self._frame, reward, terminated, truncated, info = self.env.step(action)
        m = self.metrics
        m.steps += 1
        m.score += float(reward)
        m.tiles_visited = int(self.core.tile_visited_count)
        if not self.on_track():
            m.off_track_steps += 1
        if terminated:
            m.lap_completed = bool(info.get("lap_finished", False))
            m.out_of_playfield = not m.lap_completed
        m.truncated = bool(truncated) and not terminated
        return float(reward)

    def stop(self) -> None:
        """End the episode here: metrics freeze and further ``send`` calls raise."""
        self._stopped = True

    # -- the car link ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self._latched and not self.done

    def drive(self, label: str) -> bool:
        """:meth:`send` as a car link: False once e-stopped or when the episode is over."""
        if not self.ready:
            return False
        self.send(label)
        self.stats["commands"] += 1
        return True

    def hold_stop(self, reason=None) -> bool:
        """Brake for one frame: the world moves on while the car is held still (e-stop included)."""
        if self.done:
            return False
        self.send("brake")
        self.stats["holds"] += 1
        return True

    def emergency_stop(self) -> None:
        """Refuse every later :meth:`drive`; :meth:`hold_stop` keeps braking."""
        self._latched = True
        self.problem = "e-stop"

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
