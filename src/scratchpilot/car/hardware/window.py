"""The laptop's window for the real car and the simulator: the live frame, status lines, and the keys.

pygame is imported when a window opens, never at module import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Controls:
    """What the person at the laptop asks for now: keys held, e-stop pressed, quit."""

    held: frozenset[str] = frozenset()
    estop: bool = False
    quit: bool = False


class CarWindow:
    """A pygame window: the live frame scaled up, status lines on top, and the keyboard.

    Held keys are tracked from key-down/key-up events (and cleared when the window loses focus, so a
    key released in another window cannot stay "held"). Space is the e-stop; Esc or closing the window
    quits. pygame is imported here, never at module import.

    Parameters
    ----------
    title : str
        Window caption.
    width : int
        Target window width; frames are scaled up by a whole factor to about this width.
    """

    KEY_NAMES = {"K_UP": "up", "K_DOWN": "down", "K_LEFT": "left", "K_RIGHT": "right", "K_SPACE": "space"}

    def __init__(self, title: str = "scratchpilot", width: int = 640):
        try:
            import pygame
        except ImportError as exc:
            raise RuntimeError("the window needs pygame: pip install 'scratchpilot[car]' (or pygame-ce)") from exc
        self._pygame = pygame
        self._codes = {getattr(pygame, name): key for name, key in self.KEY_NAMES.items()}
        self._width = int(width)
        self._held: set[str] = set()
        self._estop = False
        self._quit = False
        self._title = title
        try:
            pygame.display.init()
            pygame.font.init()
            self._window = pygame.display.set_mode((self._width, self._width * 3 // 4))
        except pygame.error as exc:
            raise RuntimeError(f"cannot open a window ({exc}); without a display use --no-window") from exc
        pygame.display.set_caption(title)
        self._font = pygame.font.Font(None, 28)
        self._frame_size: tuple[int, int] | None = None

    def poll(self) -> Controls:
        """Handle pending window events and return the controls now."""
        pygame = self._pygame
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                self._quit = True
            elif event.type == pygame.KEYDOWN and event.key in self._codes:
                self._held.add(self._codes[event.key])
                if event.key == pygame.K_SPACE:
                    self._estop = True
            elif event.type == pygame.KEYUP and event.key in self._codes:
                self._held.discard(self._codes[event.key])
            elif event.type in (pygame.WINDOWFOCUSLOST, pygame.WINDOWMINIMIZED):
                self._held.clear()  # key-ups that happen elsewhere never reach us
        return Controls(frozenset(self._held), self._estop, self._quit)

    def show(self, image: np.ndarray | None, lines: list[tuple[str, tuple[int, int, int]]]) -> None:
        """Draw ``image`` ((H, W, 3) uint8 RGB) scaled up, and the ``(text, colour)`` lines over it."""
        pygame = self._pygame
        if image is not None:
            height, width = image.shape[:2]
            scale = max(1, self._width // width)
            if self._frame_size != (width * scale, height * scale):
                self._frame_size = (width * scale, height * scale)
                self._window = pygame.display.set_mode(self._frame_size)
            surface = pygame.surfarray.make_surface(np.ascontiguousarray(image.swapaxes(0, 1)))
            self._window.blit(pygame.transform.scale(surface, self._frame_size), (0, 0))
        top = 4
        for text, colour in lines:
            rendered = self._font.render(text, True, colour, (0, 0, 0))
            self._window.blit(rendered, (6, top))
            top += rendered.get_height() + 2
        pygame.display.flip()

    def close(self) -> None:
        self._pygame.display.quit()


class NoWindow:
    """``--no-window``: no keys, no e-stop key (Ctrl-C ends the run and releases the car)."""

    def poll(self) -> Controls:
        return Controls()

    def show(self, image, lines) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to close."""


_GREEN, _RED, _WHITE = (80, 230, 80), (255, 70, 70), (240, 240, 240)


class WindowControls:
    """-> (held, estop, end): the keys held now, the e-stop (space, latched by the window), and "window
    closed" once Esc is pressed or the window is closed."""

    def __init__(self, window):
        self.window = window

    def run(self):
        controls = self.window.poll()
        return controls.held, controls.estop, "window closed" if controls.quit else None


class WindowDisplay:
    """(image, label, confidence, stop, frame_time) -> the window: the newest frame and status lines.

    The window is redrawn on every new frame and whenever the stop changes (so a stalled stream still
    shows why the car stands). ``safety`` tells a latched e-stop apart from other stops; ``count`` (a
    callable, optional) adds a figure such as the frames recorded.
    """

    def __init__(self, window, safety, who: str = "label", count=None, clock=None):
        self.window, self.safety, self.who, self.count = window, safety, who, count
        self._clock = clock or time.time
        self._last_stop = object()

    def run(self, image, label, confidence, stop, frame_time) -> None:
        if image is None and stop == self._last_stop:
            return
        self._last_stop = stop
        decision = "-" if label is None else label if confidence is None else f"{label} ({confidence:.2f})"
        first = f"{self.who}: {decision}"
        if self.count is not None:
            first += f"   {self.count()}"
        age = "-" if frame_time is None else f"{(self._clock() - frame_time) * 1000:.0f} ms"
        if self.safety.estopped:
            status = ("E-STOP (latched: restart to drive)", _RED)
        elif stop is not None:
            status = (f"STOP: {stop}"[:70], _RED)
        else:
            status = ("driving", _GREEN)
        self.window.show(image, [(first, _WHITE), (f"frame age: {age}", _WHITE), status])
