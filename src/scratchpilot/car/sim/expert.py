"""A scripted expert driver for ``CarRacing-v3`` that reads the track and the car's state, not pixels.

It is the teacher whose (frame, label) pairs the neural pilot imitates, so it only ever chooses one of
the five discrete commands in :data:`~scratchpilot.car.links.LABELS`.

How it drives
-------------
* **Which line** -- :func:`racing_line` shifts the centre line sideways within the road to make it
  shorter and straighter (every tile spans the whole road, so no tile is skipped).
* **Where to go** -- pure pursuit: a target point on that line ``lookahead`` track units ahead of the
  car's nearest point (further at higher speed) gives the front-wheel angle that would put the rear
  axle on an arc through it, ``delta* = atan(2 L sin(alpha) / d)``.
* **How to steer with on/off keys** -- the env turns the wheels towards +-0.4 rad at up to 3 rad/s
  while a steer command is held and back towards straight otherwise, so the expert presses left or
  right whenever the wheels are more than ``steer_tolerance`` away from ``delta*``: pulse-width steering.
* **How fast** -- a speed limit along the line, ``sqrt(lateral_accel / curvature)`` in each curve
  (the tyres hold about 4 x 400 / 7.3 = 219 units/s^2 on the road),
  propagated backwards with ``brake_decel`` so that braking starts in time; gas below the limit, brake
  well above it, coast in between.

Everything is computed from ``env.unwrapped.track`` (rows ``(alpha, beta, x, y)``, in driving order)
and ``car.hull`` / ``car.wheels[0].joint``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Car geometry from gymnasium's car_dynamics (SIZE = 0.02; front wheels at y = +80, rear at y = -82).
REAR_AXLE_OFFSET = -82 * 0.02  #: rear axle along the hull's forward axis, from the hull origin
WHEELBASE = (80 + 82) * 0.02
MAX_STEER_ANGLE = 0.4  #: the steering joint's limit in radians
ROAD_HALF_WIDTH = 40 / 6.0  #: car_racing.TRACK_WIDTH: centre line to road edge


@dataclass(frozen=True)
class ExpertParams:
    """Tuning knobs of :class:`ScriptedExpert` (units: track units, seconds, radians)."""

    lateral_accel: float = 200.0  #: allowed v^2 * curvature in a curve
    brake_decel: float = 60.0  #: deceleration assumed when planning where to brake
    max_speed: float = 110.0  #: speed limit on straights
    lookahead_base: float = 6.0  #: pure-pursuit distance at standstill
    lookahead_per_speed: float = 0.12  #: extra look-ahead per unit of speed (i.e. seconds)
    steer_tolerance: float = 0.05  #: wheel-angle error (rad) tolerated before pressing left/right
    brake_margin: float = 15.0  #: brake only when this much faster than the limit, else coast
    curvature_window: int = 3  #: track points on each side used to estimate curvature
    line_margin: float = 2.5  #: racing line keeps the hull centre this far inside the road edge
    line_iterations: int = 600  #: optimisation passes for the racing line
    line_stiffness: float = 30.0  #: racing line: 0 = shortest path, larger = rounder bends

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def racing_line(track: np.ndarray, margin: float, iterations: int, stiffness: float = 0.0) -> np.ndarray:
    """A line through the road that is shorter and straighter than the centre line.

    Every tile spans the full road width, so any line that stays on the road still visits every tile.
    With discrete controls, holding any steering angle costs every other frame (the wheels spring back
    whenever left/right is released, and steering cuts the gas), so the time lost grows with the
    *length* of curved road more than with its sharpness, which favours the shortest path (a pulled
    string: straights and tight bends); tight bends, though, must be taken slowly. The line minimises
    ``0.5 * sum |first difference|^2 + stiffness * 0.5 * sum |second difference|^2`` over sideways
    shifts of the centre points, each clipped to the road.

    Parameters
    ----------
    track : ndarray, shape (N, 4)
        Rows ``(alpha, beta, x, y)``; ``(cos beta, sin beta)`` is the cross direction at each point.
    margin : float
        How far inside the road edge the line must stay (the car is about 2.8 units wide).
    iterations : int
        Projected-gradient passes; 0 returns the centre line.
    stiffness : float
        Weight of the curvature term (0: shortest path; large: smoothest path). With the other
        defaults the expert averaged 879 on tracks 100..119 with 0, 902 with 30, 878 with 300, and
        733 on the centre line itself.

    Returns
    -------
    ndarray, shape (N, 2)
    """
    centre = track[:, 2:4]
    across = np.stack([np.cos(track[:, 1]), np.sin(track[:, 1])], axis=1)
    # The car starts on the centre of point 0, facing along the road: the line starts there too, so the
    # first second (the slowest, when steering costs most acceleration) needs no steering.
    half_width = np.full(len(track), max(ROAD_HALF_WIDTH - margin, 0.0))
    half_width[0] = 0.0

    def laplacian(points: np.ndarray) -> np.ndarray:
        return np.roll(points, -1, axis=0) - 2.0 * points + np.roll(points, 1, axis=0)

    def gradient(offset: np.ndarray) -> np.ndarray:
        second = laplacian(centre + offset[:, None] * across)
        # d/d(point): -second difference for the length term, a fourth difference for the curvature term
        grad = -second + stiffness * laplacian(second)
        return (grad * across).sum(axis=1)

    # Accelerated projected gradient (FISTA) with step 1/L, L = 4 + 16 * stiffness the largest eigenvalue
    # of the quadratic form, so steps are stable and momentum speeds up the long-wavelength bends.
    step = 1.0 / (4.0 + 16.0 * stiffness)
    offset = previous = np.zeros(len(track))
    momentum = 1.0
    for _ in range(iterations):
        next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        probe = offset + ((momentum - 1.0) / next_momentum) * (offset - previous)
        previous, offset = offset, np.clip(probe - step * gradient(probe), -half_width, half_width)
        momentum = next_momentum
    return centre + offset[:, None] * across


class ScriptedExpert:
    """Pure-pursuit driver with a curvature speed profile.

    Parameters
    ----------
    params : ExpertParams, optional
        Tuning; the defaults were tuned on tracks 100..119 (not the benchmark's tracks 0..9).
    """

    def __init__(self, params: ExpertParams | None = None):
        self.params = params or ExpertParams()
        self.points = np.zeros((0, 2))
        self._index = 0

    # -- track ---------------------------------------------------------------------------------------
    def reset(self, track: np.ndarray) -> None:
        """Prepare for a new track.

        Parameters
        ----------
        track : ndarray, shape (N, 4)
            ``env.unwrapped.track`` rows ``(alpha, beta, x, y)`` in driving order (a closed loop).
        """
        track = np.asarray(track, dtype=np.float64)
        if track.ndim != 2 or track.shape[1] != 4 or len(track) < 8:
            raise ValueError(f"track must have shape (N >= 8, 4) of (alpha, beta, x, y), got {track.shape}")
        p = self.params
        self.points = racing_line(track, p.line_margin, p.line_iterations, p.line_stiffness)
        n = len(self.points)
        segment = np.linalg.norm(np.roll(self.points, -1, axis=0) - self.points, axis=1)  # i -> i+1
        self.segment_lengths = segment
        self.arc = np.concatenate([[0.0], np.cumsum(segment)])  # arc[i] = distance from point 0 to i
        self.length = float(self.arc[-1])

        # Curvature: heading change over +-w points divided by the arc length between them.
        w = p.curvature_window
        ahead = np.roll(self.points, -w, axis=0) - self.points
        behind = self.points - np.roll(self.points, w, axis=0)
        turn = np.arctan2(behind[:, 0] * ahead[:, 1] - behind[:, 1] * ahead[:, 0],
                          (behind * ahead).sum(axis=1))
        span = np.array([segment[(np.arange(i - w, i + w)) % n].sum() for i in range(n)])
        self.curvature = np.abs(turn) / np.maximum(span / 2.0, 1e-6)

        limit = np.minimum(np.sqrt(p.lateral_accel / np.maximum(self.curvature, 1e-9)), p.max_speed)
        # Backward pass (twice round the loop for the wrap-around): never faster than one can brake from.
        for _ in range(2):
            for i in range(n - 1, -1, -1):
                following = limit[(i + 1) % n]
                limit[i] = min(limit[i], math.sqrt(following * following + 2.0 * p.brake_decel * segment[i]))
        self.speed_limit = limit
        self._index = 0

    # -- driving -------------------------------------------------------------------------------------
    def _nearest_index(self, position: np.ndarray) -> int:
        n = len(self.points)
        window = (self._index + np.arange(-10, 40)) % n
        dist = np.linalg.norm(self.points[window] - position, axis=1)
        best = int(window[np.argmin(dist)])
        if dist.min() > 30.0:  # lost (spun off): search the whole loop
            best = int(np.argmin(np.linalg.norm(self.points - position, axis=1)))
        self._index = best
        return best

    def _point_ahead(self, index: int, distance: float) -> np.ndarray:
        """The centre-line point ``distance`` along the track after point ``index``."""
        n = len(self.points)
        i = index
        remaining = distance
        for _ in range(n):
            seg = self.segment_lengths[i]
            if remaining <= seg:
                t = remaining / max(seg, 1e-9)
                return self.points[i] + t * (self.points[(i + 1) % n] - self.points[i])
            remaining -= seg
            i = (i + 1) % n
        return self.points[index]

    def choose(self, position, angle: float, velocity, steer_angle: float) -> str:
        """Pick a label from the car's state.

        Parameters
        ----------
        position : array-like, shape (2,)
            Hull position (x, y).
        angle : float
            Hull angle in radians (forward is ``(-sin, cos)``).
        velocity : array-like, shape (2,)
            Hull linear velocity.
        steer_angle : float
            Current front-wheel angle (``car.wheels[0].joint.angle``), positive = left.

        Returns
        -------
        str
            One of ``"none", "forward", "left", "right", "brake"``.
        """
        if not len(self.points):
            raise RuntimeError("call reset(track) before choose()")
        p = self.params
        position = np.asarray(position, dtype=np.float64)
        forward = np.array([-math.sin(angle), math.cos(angle)])
        speed = float(np.hypot(*velocity))

        index = self._nearest_index(position)
        lookahead = p.lookahead_base + p.lookahead_per_speed * speed
        target = self._point_ahead(index, lookahead)
        rear_axle = position + REAR_AXLE_OFFSET * forward
        to_target = target - rear_axle
        distance = max(float(np.hypot(*to_target)), 1e-6)
        # alpha > 0: target is to the left of the heading (cross product of forward and to_target)
        alpha = math.atan2(forward[0] * to_target[1] - forward[1] * to_target[0], float(forward @ to_target))
        wanted = math.atan(2.0 * WHEELBASE * math.sin(alpha) / distance)
        wanted = max(-MAX_STEER_ANGLE, min(MAX_STEER_ANGLE, wanted))

        limit = float(self.speed_limit[index])
        if speed > limit + p.brake_margin:
            return "brake"
        error = wanted - steer_angle
        if error > p.steer_tolerance:
            return "left"
        if error < -p.steer_tolerance:
            return "right"
        return "forward" if speed < limit else "none"

    def act(self, car) -> str:
        """Pick a label from a gymnasium ``Car`` (``Simulator.car``)."""
        hull = car.hull
        return self.choose(tuple(hull.position), float(hull.angle), tuple(hull.linearVelocity),
                           float(car.wheels[0].joint.angle))


def drive_episode(sim, expert: ScriptedExpert | None = None, on_step=None):
    """Let the expert drive ``sim`` (a :class:`~scratchpilot.car.sim.env.Simulator`) until the episode ends.

    Parameters
    ----------
    sim : Simulator
        Freshly reset; with ``render_frames=False`` this is state-only and fast.
    expert : ScriptedExpert, optional
        Default: a new one with default parameters.
    on_step : callable, optional
        ``on_step(frame, label)`` before each command (frame is None without rendering); for recording.

    Returns
    -------
    EpisodeMetrics
    """
    expert = expert or ScriptedExpert()
    expert.reset(sim.track)
    while not sim.done:
        label = expert.act(sim.car)
        if on_step is not None:
            on_step(sim.read()[0] if sim.render_frames else None, label)
        sim.send(label)
    return sim.metrics
