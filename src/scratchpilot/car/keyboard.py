"""Drive with the arrow keys, through the same frame source / actuator interfaces as every pilot.

Keys: up = forward, left / right = steer, down or space = brake, Esc or closing the window = quit.
The discrete controls allow one command per frame, so steering wins over gas (let go of the arrow to
accelerate again), and pressing left and right together cancels the steering.

Needs a display; pygame is imported only when the window opens. Run it with::

    python -m scratchpilot.car.keyboard --seed 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Collection

#: the key names :func:`keys_to_label` understands
KEY_NAMES = ("up", "down", "left", "right", "space")


def keys_to_label(held: Collection[str]) -> str:
    """Map the set of held keys to one driving label.

    Parameters
    ----------
    held : collection of str
        Names from :data:`KEY_NAMES` of the keys currently down; other names are ignored.

    Returns
    -------
    str
        ``"brake"`` if down or space is held, else ``"left"`` / ``"right"`` if exactly one of them is
        held, else ``"forward"`` if up is held, else ``"none"``.
    """
    if "space" in held or "down" in held:
        return "brake"
    left, right = "left" in held, "right" in held
    if left != right:
        return "left" if left else "right"
    return "forward" if "up" in held else "none"


def _held_key_names(pygame) -> set[str]:
    pressed = pygame.key.get_pressed()
    codes = {"up": pygame.K_UP, "down": pygame.K_DOWN, "left": pygame.K_LEFT, "right": pygame.K_RIGHT,
             "space": pygame.K_SPACE}
    return {name for name, code in codes.items() if pressed[code]}


def drive_with_keyboard(source, actuator, *, fps: float = 50.0, scale: int = 6,
                        is_done: Callable[[], bool] | None = None, max_frames: int | None = None) -> int:
    """Show ``source``'s frames scaled up in a window and send the keyboard's label to ``actuator``.

    Parameters
    ----------
    source : FrameSource
        ``read() -> (frame (H, W, 3) uint8, timestamp)``.
    actuator : Actuator
        ``send(label)`` once per frame; ``stop()`` when the loop ends, however it ends.
    fps : float
        Frames per second to pace the loop at (the simulator's own rate is 50).
    scale : int
        Window pixels per frame pixel.
    is_done : callable, optional
        Ends the loop when it returns True (e.g. ``lambda: sim.done``).
    max_frames : int, optional
        Ends the loop after this many commands.

    Returns
    -------
    int
        The number of commands sent.
    """
    import pygame

    pygame.display.init()
    pygame.font.init()
    frames = 0
    try:
        frame, _ = source.read()
        height, width = frame.shape[:2]
        window = pygame.display.set_mode((width * scale, height * scale))
        clock = pygame.time.Clock()
        while not (is_done is not None and is_done()) and (max_frames is None or frames < max_frames):
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    return frames
            label = keys_to_label(_held_key_names(pygame))
            actuator.send(label)
            frames += 1
            frame, timestamp = source.read()
            # surfarray is indexed (x, y); frames are (row, column)
            surface = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
            window.blit(pygame.transform.scale(surface, window.get_size()), (0, 0))
            pygame.display.set_caption(f"scratchpilot  {label:>7}  t={timestamp:6.2f}s")
            pygame.display.flip()
            clock.tick(fps)
        return frames
    finally:
        actuator.stop()
        pygame.display.quit()


def main(argv: list[str] | None = None) -> int:
    """Drive one simulated track by keyboard and print the episode's metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="track seed (default 0)")
    parser.add_argument("--scale", type=int, default=6, help="window pixels per frame pixel (default 6)")
    args = parser.parse_args(argv)
    from .sim import Simulator

    with Simulator(args.seed) as sim:
        start = time.perf_counter()
        drive_with_keyboard(sim, sim, scale=args.scale, is_done=lambda: sim.done)
        m = sim.metrics
        lap = "completed" if m.lap_completed else "not completed"
        print(f"track {args.seed}: score {m.score:.1f}, {m.tiles_visited}/{m.tiles_total} tiles, "
              f"{m.steps} frames, {m.off_track_steps} off track, lap {lap} "
              f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
