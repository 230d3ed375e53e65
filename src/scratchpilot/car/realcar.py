"""The real RC car: the camera stream on the Pi, keyboard recording and network driving on the laptop.

::

    Pi:      camera --StreamServer--> TCP (Wi-Fi)
    laptop:  StreamClient --newest frame--> keyboard or Pilot --SafetyLayer--> car link --serial--> Arduino

Three commands (wired in :mod:`scratchpilot.car.cli`):

* ``car stream --camera picamera2|opencv:0|test-pattern|sim`` serves camera frames (:func:`cmd_stream`);
* ``car record --source tcp://PI:8000 --keyboard [--serial PORT]`` shows the live frame in a pygame
  window, labels every frame with the arrow keys held at that moment and records it with the
  crash-safe :class:`~scratchpilot.car.recorder.SessionWriter`; the keys also drive the car
  (:func:`cmd_record`, per-frame logic in :class:`KeyboardRecorder`);
* ``car drive --model pilot.npz --source tcp://PI:8000 --serial PORT`` lets the network drive
  (:func:`cmd_drive`, per-frame logic in :class:`PilotDriver`), with ``--dry-run`` to see the commands
  without a car.

**The safety layer.** Every command passes :class:`SafetyLayer`, which stops the car when the newest
frame is older than ``max_frame_age`` (200 ms), when the stream drops or is down, when the serial link
is lost, when the prediction's confidence is below a threshold, or when the e-stop (space) is pressed.
Unlike the simulator's :func:`~scratchpilot.car.pilot.run_pilot_loop`, the loop does not end at a stop:
it holds the car still, logs the reason once, and drives again as soon as fresh frames flow and the
links are back -- except after the e-stop, which latches until the program is restarted. The loop polls
every 20 ms, so a dropped stream is noticed within one poll and a stalled one 200 ms after its last
frame was captured. When the laptop side itself hangs, no command goes out and the Arduino's own
failsafe releases everything 250 ms after the last one (see ``arduino/README.md``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .keyboard import keys_to_label
from .pilot import SafetyGate
from .serial_link import LABEL_OUTPUTS, SerialActuator, SerialLinkError, encode_drive
from .stream import DEFAULT_PORT, CameraError, Frame, StreamClient, StreamProtocolError, StreamServer, open_camera

log = logging.getLogger(__name__)

POLL_S = 0.02  #: how often the loops look at the stream when no frame arrives (bounds the stop delay)
STOP_REPEAT_S = 0.1  #: while stopped, "release everything" is re-sent this often (proves the link is alive)
MAX_STOP_EVENTS = 1000  #: stop events kept for the summary (all are counted and logged)
ARROW_KEYS = frozenset({"up", "down", "left", "right"})


# ---- arguments --------------------------------------------------------------------------------------


def parse_source(url: str) -> tuple[str, int]:
    """``tcp://HOST[:PORT]`` -> ``(host, port)``; ValueError naming the URL otherwise."""
    scheme, sep, rest = str(url).partition("://")
    if not sep or scheme != "tcp" or not rest:
        raise ValueError(f"stream source {url!r}: expected tcp://HOST:PORT (the Pi running 'scratchpilot car stream')")
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        return rest.rstrip("/"), DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        raise ValueError(f"stream source {url!r}: bad host or port (expected e.g. tcp://192.168.1.20:8000)")
    return host.strip("[]"), int(port_text)


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height); ValueError otherwise."""
    width, sep, height = str(text).lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise ValueError(f"frame size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(width), int(height)


def _command_error(message: str) -> Exception:
    from ..cli import CommandError

    return CommandError(message)


def _setup_logging() -> None:
    """Show the stop reasons and link events on stderr when no one configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _percentiles(values, *quantiles: float) -> dict[str, float | None]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": None for q in quantiles} | {"max": None}
    result = {f"p{q:g}": round(float(np.percentile(data, q)), 3) for q in quantiles}
    return result | {"max": round(float(data.max()), 3)}


# ---- the Pi: cameras and the stream server ---------------------------------------------------------


class SimulatorCamera:
    """CarRacing-v3 frames, driven by the scripted expert: a stand-in camera to try the stream without a car.

    Frames are ``(96, 96, 3)`` uint8 RGB whatever the requested size. ``read()`` paces itself to ``fps``
    and advances the simulation by about ``50 / fps`` steps, so the car moves at its simulated speed; a
    finished track is followed by the next seed.
    """

    def __init__(self, seed: int = 0, fps: float = 24.0):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        from .expert import ScriptedExpert
        from .sim import FPS, Simulator

        self.seed = int(seed)
        self._sim = Simulator(self.seed)
        self._expert = ScriptedExpert()
        self._expert.reset(self._sim.track)
        self._steps_per_frame = max(1, round(FPS / fps))
        self._period = 1.0 / fps
        self._next_deadline: float | None = None

    def read(self) -> tuple[np.ndarray, float]:
        now = time.monotonic()
        if self._next_deadline is not None and now < self._next_deadline:
            time.sleep(self._next_deadline - now)
        self._next_deadline = max(now, self._next_deadline or now) + self._period
        for _ in range(self._steps_per_frame):
            if self._sim.done:
                self.seed += 1
                self._sim.reset(self.seed)
                self._expert.reset(self._sim.track)
            self._sim.send(self._expert.act(self._sim.car))
        frame, _ = self._sim.read()
        return np.array(frame), time.time()

    def close(self) -> None:
        self._sim.close()


def open_stream_camera(spec: str, size: tuple[int, int] = (320, 240), fps: float = 24.0):
    """:func:`~scratchpilot.car.stream.open_camera`, plus ``sim`` (:class:`SimulatorCamera`)."""
    if spec == "sim":
        try:
            return SimulatorCamera(fps=fps)
        except ImportError as exc:
            raise CameraError(f"--camera sim needs the simulator: {exc}") from exc
    return open_camera(spec, size, fps)


def cmd_stream(args) -> int:
    """``car stream``: serve the camera on ``--host:--port`` until Ctrl-C."""
    _setup_logging()
    try:
        size = parse_size(args.size)
        if not args.fps > 0:
            raise ValueError(f"--fps must be positive, got {args.fps}")
        camera = open_stream_camera(args.camera, size, args.fps)
    except (ValueError, CameraError) as exc:
        raise _command_error(str(exc)) from None
    # The simulator runs on its own clock: frames are stamped with the wall clock when they are read.
    server = StreamServer(camera, args.host, args.port, use_source_timestamp=args.camera != "sim")
    try:
        server.start()
    except OSError as exc:
        camera.close()
        raise _command_error(f"{exc} (is another stream already running? try --port)") from None
    host, port = server.address
    shape = "96x96 (the simulator's frames)" if args.camera == "sim" else f"{size[0]}x{size[1]}"
    print(f"streaming {args.camera} {shape} at {args.fps:g} fps on {host}:{port}; Ctrl-C to stop", flush=True)
    print(f"on the laptop: scratchpilot car record --source tcp://<this machine>:{port} --keyboard", flush=True)
    started = time.monotonic()
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        camera.close()
    seconds = time.monotonic() - started
    stats = server.stats
    print(f"stream stopped after {seconds:.0f} s: {stats['frames_captured']} frames captured "
          f"({stats['frames_captured'] / max(seconds, 1e-9):.1f}/s), {stats['frames_sent']} sent to "
          f"{stats['clients_accepted']} client(s)", flush=True)
    return 0


# ---- links to the car -------------------------------------------------------------------------------


class SerialCarLink:
    """The Arduino behind a :class:`~scratchpilot.car.serial_link.SerialActuator` that reopens itself.

    When the link is lost (cable pulled, board silent), :meth:`drive` returns False, the board's own
    failsafe releases everything within 250 ms, and a background thread reopens the port every
    ``reconnect_s`` until it answers again. :meth:`emergency_stop` latches: the port is released and
    never reopened.

    Parameters
    ----------
    url : str
        Serial port or pyserial URL (``/dev/ttyUSB0``, ``socket://127.0.0.1:5000``).
    reconnect_s : float
        Pause between attempts to reopen a lost port.
    actuator_options
        Passed to :class:`~scratchpilot.car.serial_link.SerialActuator` (``ack_timeout_s``...).
        The first opening raises :class:`~scratchpilot.car.serial_link.SerialLinkError` as it comes.
    """

    def __init__(self, url: str, *, reconnect_s: float = 0.5, **actuator_options: Any):
        self.url = url
        self.reconnect_s = float(reconnect_s)
        self._options = actuator_options
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._latched = False
        self._reconnector: threading.Thread | None = None
        self.problem: str | None = None
        self.stats = {"commands": 0, "not_acked": 0, "losses": 0, "reconnects": 0}
        self.round_trip_ms: deque = deque(maxlen=100_000)  #: command written -> ack read
        self._actuator: SerialActuator | None = SerialActuator(url, **actuator_options)

    @property
    def ready(self) -> bool:
        """True while commands can be sent (the port is open and not e-stopped)."""
        return self._actuator is not None and not self._latched

    @property
    def actuator(self) -> SerialActuator | None:
        return self._actuator

    def drive(self, label: str) -> bool:
        """Send one label's outputs; False when the link is down (the board's failsafe holds the car)."""
        return self._send(lambda actuator: actuator.send(label))

    def hold_stop(self, reason: str = "") -> bool:
        """Release everything without latching; False when the link is down."""
        return self._send(lambda actuator: actuator.send_outputs("-"))

    def _send(self, command: Callable[[SerialActuator], Any]) -> bool:
        with self._lock:
            actuator = self._actuator
            if actuator is None or self._latched:
                return False
            try:
                result = command(actuator)
            except SerialLinkError as exc:
                self._lose(str(exc))
                return False
            self.stats["commands"] += 1
            if result.acked:
                self.round_trip_ms.append(result.round_trip_s * 1000)
            else:
                self.stats["not_acked"] += 1
            return True

    def _lose(self, reason: str) -> None:
        actuator, self._actuator = self._actuator, None
        self.problem = reason
        self.stats["losses"] += 1
        log.error("serial %s: %s; the board's failsafe releases the car, reconnecting every %.1f s",
                  self.url, reason, self.reconnect_s)
        if actuator is not None:
            actuator.close()  # a lost actuator only closes its port
        if not self._closing.is_set() and not self._latched:
            self._reconnector = threading.Thread(target=self._reconnect, name=f"serial-reconnect-{self.url}",
                                                 daemon=True)
            self._reconnector.start()

    def _reconnect(self) -> None:
        while not self._closing.wait(self.reconnect_s):
            try:
                actuator = SerialActuator(self.url, **self._options)
            except SerialLinkError as exc:
                self.problem = f"reconnecting: {exc}"
                log.debug("serial %s: %s", self.url, self.problem)
                continue
            with self._lock:
                if self._closing.is_set() or self._latched:
                    actuator.close()
                    return
                self._actuator = actuator
                self.problem = None
                self.stats["reconnects"] += 1
            log.warning("serial %s: link back", self.url)
            return

    def emergency_stop(self) -> None:
        """Release everything and refuse every later command, reconnections included."""
        with self._lock:
            self._latched = True
            if self._actuator is not None:
                self._actuator.stop()

    def close(self) -> None:
        """Release the car (best effort) and close the port; idempotent."""
        self._closing.set()
        with self._lock:
            if self._actuator is not None:
                self._actuator.close()
        if self._reconnector is not None:
            self._reconnector.join(timeout=5.0)


class DryRunLink:
    """Prints the serial lines a command would produce instead of sending them (``--dry-run``).

    A line is printed when the outputs or their reason change (not 24 times a second), with the driving
    label or the stop reason; :attr:`lines` counts every line that would have gone out.
    """

    def __init__(self, printer: Callable[[str], None] = print):
        self._printer = printer
        self._sequence = 0
        self._last_change: tuple[str, str | None] | None = None
        self._latched = False
        self.lines = 0
        self.problem: str | None = None
        self.stats = {"commands": 0, "changes": 0}

    @property
    def ready(self) -> bool:
        return not self._latched

    def drive(self, label: str) -> bool:
        try:
            outputs = LABEL_OUTPUTS[label]
        except KeyError:
            raise ValueError(f"unknown driving label {label!r}; expected one of {', '.join(LABEL_OUTPUTS)}") from None
        return self._would_send(outputs, label)

    def hold_stop(self, reason: str = "") -> bool:
        return self._would_send("-", f"stop: {reason}" if reason else "stop")

    def _would_send(self, outputs: str, why: str) -> bool:
        if self._latched:
            return False
        self._sequence = (self._sequence + 1) % 65536
        line = encode_drive(outputs, self._sequence).decode("ascii").rstrip("\n")
        self.lines += 1
        self.stats["commands"] += 1
        change = (outputs, _reason_kind(why))
        if change != self._last_change:
            self.stats["changes"] += 1
            self._printer(f"dry run: would send {line:<14} ({why})")
            self._last_change = change
        return True

    def emergency_stop(self) -> None:
        if not self._latched:
            self._would_send("-", "e-stop")
            self._latched = True

    def close(self) -> None:
        """Nothing to release."""


class NoCarLink:
    """No car attached (``record`` without ``--serial``): every command succeeds and does nothing."""

    problem: str | None = None

    def __init__(self):
        self._latched = False
        self.stats: dict[str, int] = {}

    @property
    def ready(self) -> bool:
        return not self._latched

    def drive(self, label: str) -> bool:
        return not self._latched

    def hold_stop(self, reason: str = "") -> bool:
        return not self._latched

    def emergency_stop(self) -> None:
        self._latched = True

    def close(self) -> None:
        """Nothing to release."""


# ---- the safety layer -------------------------------------------------------------------------------


def _reason_kind(reason: str | None) -> str | None:
    """``"stale frame (213 ms > 200 ms)"`` -> ``"stale frame"``: a changing figure is the same stop."""
    return None if reason is None else reason.split(" (", 1)[0]


class SafetyLayer:
    """Sits between whoever chooses the label (keyboard, pilot) and the car link.

    :meth:`check` says why the car must stop now (or None); :meth:`act` sends the label or holds the car
    still, and keeps the log of stops: one entry (and one log line) per stop, with its reason, the frame
    and how long it lasted.

    Parameters
    ----------
    client : StreamClient
        The stream; its connection state and drop counter tell when frames stop being trustworthy.
    link
        :class:`SerialCarLink`, :class:`DryRunLink` or :class:`NoCarLink`.
    gate : SafetyGate
        Frame-age and confidence limits (the simulator's gate, reused).
    clock : callable
        Monotonic seconds (tests may pass their own).
    """

    def __init__(self, client: StreamClient, link, gate: SafetyGate | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.link = link
        self.gate = gate if gate is not None else SafetyGate(max_frame_age=0.2)
        self._clock = clock
        self._started = clock()
        self.estopped = False
        self.reason: str | None = None  #: why the car is held still now (None while driving)
        self.stops: list[dict[str, Any]] = []
        self.stop_count = 0
        self._current_stop: dict[str, Any] | None = None
        self._stop_started = 0.0
        self._stop_sent_at: float | None = None
        self._drops_seen = client.stats["drops"]
        self._resume_after_index = -1  # frames up to this index predate the last drop

    def emergency_stop(self) -> None:
        """Stop now and latch: nothing is sent to the car again."""
        if not self.estopped:
            self.estopped = True
            self.link.emergency_stop()
            self._note("e-stop pressed", None)

    def check(self, frame: Frame | None, confidence: float | None = None) -> str | None:
        """The reason to stop for the newest ``frame`` we hold (None: safe to drive)."""
        if self.estopped:
            return "e-stop pressed"
        drops = self.client.stats["drops"]
        if drops != self._drops_seen:
            self._drops_seen = drops
            self._resume_after_index = frame.index if frame is not None else 0
        if not self.client.connected:
            return f"stream lost (disconnected: {self.client.last_error or 'connecting'})"
        if frame is None:
            return "no frame yet (waiting for the stream)"
        if frame.index <= self._resume_after_index:
            return f"stream lost (reconnected after: {self.client.last_error}; waiting for a fresh frame)"
        if not self.link.ready:
            return f"serial link lost ({self.link.problem})"
        return self.gate.check(frame_age=frame.age_s(), confidence=confidence)

    def act(self, label: str | None, reason: str | None, frame: Frame | None = None) -> str | None:
        """Drive with ``label`` when ``reason`` is None, else hold the car still.

        ``label=None`` with no reason means "nothing new" (no new frame): nothing is sent. Returns the
        label sent, ``"stop"`` while stopped, or None when nothing was sent.
        """
        index = None if frame is None else frame.index
        if reason is None and label is not None:
            if self.link.drive(label):
                self._note(None, index)
                self._stop_sent_at = None
                return label
            reason = f"serial link lost ({self.link.problem})"
        if reason is None:
            return None
        self._note(reason, index)
        if self.estopped:
            return None
        now = self._clock()
        if self._stop_sent_at is None or now - self._stop_sent_at >= STOP_REPEAT_S:
            self.link.hold_stop(reason)
            self._stop_sent_at = now
        return "stop"

    def _note(self, reason: str | None, frame_index: int | None) -> None:
        """Log the start and end of each stop (a stop whose reason changes kind starts a new entry)."""
        if _reason_kind(reason) == _reason_kind(self.reason):
            self.reason = reason
            return
        now = self._clock()
        if self._current_stop is not None:
            self._current_stop["duration_s"] = round(now - self._stop_started, 3)
        if reason is None:
            log.info("driving again after %.2f s stopped", now - self._stop_started)
            self._current_stop = None
        else:
            log.warning("stop: %s", reason)
            self.stop_count += 1
            self._current_stop = {"t_s": round(now - self._started, 3), "frame": frame_index, "reason": reason,
                                  "duration_s": None}
            self._stop_started = now
            if len(self.stops) < MAX_STOP_EVENTS:
                self.stops.append(self._current_stop)
        self.reason = reason

    def summary(self) -> dict[str, Any]:
        return {"stops_total": self.stop_count, "stops": [dict(stop) for stop in self.stops],
                "estopped": self.estopped}


# ---- keyboard and window ----------------------------------------------------------------------------


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


_GREEN, _RED, _WHITE, _YELLOW = (80, 230, 80), (255, 70, 70), (240, 240, 240), (255, 210, 60)


def _stop_line(safety: SafetyLayer) -> tuple[str, tuple[int, int, int]]:
    if safety.estopped:
        return "E-STOP (latched: restart to drive)", _RED
    if safety.reason is not None:
        return f"STOP: {safety.reason}"[:70], _RED
    return "driving", _GREEN


def _run_loop(client: StreamClient, on_frame: Callable[[Frame, Controls], None],
              on_idle: Callable[[Controls], None], window, *, duration_s: float | None,
              stop_event: threading.Event | None, on_estop: Callable[[], None]) -> str:
    """Poll controls and the stream every :data:`POLL_S`; returns why the loop ended."""
    started = time.monotonic()
    while True:
        if stop_event is not None and stop_event.is_set():
            return "stopped"
        if duration_s is not None and time.monotonic() - started >= duration_s:
            return "duration reached"
        controls = window.poll()
        if controls.quit:
            return "window closed"
        if controls.estop:
            on_estop()
        frame = client.wait_frame(timeout_s=POLL_S)
        if frame is None:
            on_idle(controls)
        else:
            on_frame(frame, controls)


# ---- keyboard recording -----------------------------------------------------------------------------


@dataclass
class RecordStep:
    """What :meth:`KeyboardRecorder.on_frame` did with one frame."""

    label: str
    recorded: bool
    sent: str | None  #: the label sent to the car, "stop", or None
    reason: str | None  #: why the car is held still (None while driving)
    skipped: str | None = None  #: why the frame was not recorded


class KeyboardRecorder:
    """Label each stream frame with the arrow keys held when it arrives, record it, drive the car.

    One label per frame for as long as keys are held (at the stream's rate), never one per key press.
    The label follows :func:`~scratchpilot.car.keyboard.keys_to_label` on the arrow keys: down = brake,
    one of left/right = steer (the car rolls forward while steering), up = forward, nothing = none.
    The car gets its command first; then the frame is decoded and recorded -- but only while the
    safety layer lets the keys drive: a frame older than ``max_frame_age`` (the driver did not see it
    in time), one taken while the car is held still (link lost, e-stop), or one that cannot be decoded
    would teach the network keys that did not move the car.

    Parameters
    ----------
    writer : SessionWriter
        Receives ``(image, label, capture time in seconds)``.
    safety : SafetyLayer
        Holds the car link; the car is driven by the keys only while it finds nothing wrong.
    """

    def __init__(self, writer, safety: SafetyLayer):
        self.writer = writer
        self.safety = safety
        self.last_frame: Frame | None = None
        self.last_image: np.ndarray | None = None
        self.stats = {"frames": 0, "recorded": 0, "skipped_stale": 0, "skipped_stopped": 0, "skipped_estop": 0,
                      "skipped_bad_frame": 0, "skipped_shape": 0}
        self.label_counts: dict[str, int] = {}

    def on_frame(self, frame: Frame, held_keys: Collection[str]) -> RecordStep:
        """Handle one new frame with the keys held now."""
        self.stats["frames"] += 1
        self.last_frame = frame
        label = keys_to_label(ARROW_KEYS.intersection(held_keys))
        if "space" in held_keys:
            self.safety.emergency_stop()
        reason = self.safety.check(frame)
        sent = self.safety.act(label, reason, frame)
        skipped = self._record(frame, label, reason)
        return RecordStep(label, skipped is None, sent, self.safety.reason, skipped)

    def on_idle(self, held_keys: Collection[str]) -> RecordStep:
        """No new frame this poll: stop the car if the newest frame has become too old."""
        label = keys_to_label(ARROW_KEYS.intersection(held_keys))
        if "space" in held_keys:
            self.safety.emergency_stop()
        reason = self.safety.check(self.last_frame)
        sent = self.safety.act(None, reason, self.last_frame)
        return RecordStep(label, False, sent, self.safety.reason, "no new frame")

    def _record(self, frame: Frame, label: str, reason: str | None) -> str | None:
        try:
            image = frame.image()
        except StreamProtocolError as exc:
            log.warning("record: %s; frame skipped", exc)
            return self._skip("bad_frame", str(exc))
        self.last_image = image
        if self.safety.estopped:
            return self._skip("estop", "e-stop")
        if reason is not None:
            return self._skip("stale" if _reason_kind(reason) == "stale frame" else "stopped", reason)
        try:
            self.writer.add(image, label, frame.capture_ns / 1e9)
        except ValueError as exc:  # the camera changed size mid-session
            if self.stats["skipped_shape"] == 0:
                log.error("record: %s; such frames are skipped", exc)
            return self._skip("shape", str(exc))
        self.stats["recorded"] += 1
        self.label_counts[label] = self.label_counts.get(label, 0) + 1
        return None

    def _skip(self, key: str, why: str) -> str:
        self.stats[f"skipped_{key}"] += 1
        return why


def run_recording(client: StreamClient, recorder: KeyboardRecorder, window, *, duration_s: float | None = None,
                  stop_event: threading.Event | None = None) -> str:
    """The record loop: keys from ``window``, frames from ``client``, until quit/duration/``stop_event``."""

    status = {"label": "none", "age": "-", "skipped": None}

    def lines() -> list[tuple[str, tuple[int, int, int]]]:
        text = [(f"label: {status['label']}   recorded: {recorder.stats['recorded']}", _WHITE),
                (f"frame age: {status['age']} ms", _WHITE), _stop_line(recorder.safety)]
        if status["skipped"]:
            text.append((f"not recorded: {status['skipped']}"[:70], _YELLOW))
        return text

    def on_frame(frame: Frame, controls: Controls) -> None:
        step = recorder.on_frame(frame, controls.held)
        status.update(label=step.label, age=f"{frame.age_s() * 1000:.0f}", skipped=step.skipped)
        window.show(recorder.last_image, lines())

    def on_idle(controls: Controls) -> None:
        before = recorder.safety.reason
        recorder.on_idle(controls.held)
        if recorder.safety.reason != before:
            window.show(None, lines())

    return _run_loop(client, on_frame, on_idle, window, duration_s=duration_s, stop_event=stop_event,
                     on_estop=recorder.safety.emergency_stop)


def _open_link(args, *, dry_run: bool = False):
    if dry_run:
        return DryRunLink()
    if not getattr(args, "serial", None):
        return NoCarLink()
    try:
        return SerialCarLink(args.serial)
    except SerialLinkError as exc:
        raise _command_error(str(exc)) from None


def _stream_address(source: str) -> tuple[str, int]:
    try:
        return parse_source(source)
    except ValueError as exc:
        raise _command_error(str(exc)) from None


def _open_window(title: str, wanted: bool):
    if not wanted:
        return NoWindow()
    try:
        return CarWindow(title)
    except RuntimeError as exc:
        raise _command_error(str(exc)) from None


def _write_json(path: str | None, document: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def cmd_record(args) -> int:
    """``car record --source tcp://PI:8000 --keyboard [--serial PORT]``: label frames with the arrow keys."""
    from .recorder import SessionWriter

    _setup_logging()
    if not getattr(args, "keyboard", False):
        raise _command_error("recording from a real car needs --keyboard (the arrow keys label the frames)")
    duration = getattr(args, "duration", None)
    max_age = getattr(args, "max_frame_age", 0.2)
    address = _stream_address(args.source)
    link = _open_link(args)
    client = StreamClient(*address).start()
    window = writer = None
    ended = "error"
    try:
        window = _open_window(f"scratchpilot record  {args.source}", True)
        writer = SessionWriter(args.out, source=args.source, driver="keyboard",
                               meta={"serial": getattr(args, "serial", None), "max_frame_age_s": max_age,
                                     "labelling": "arrow keys held when each frame arrived"})
        safety = SafetyLayer(client, link, SafetyGate(max_frame_age=max_age))
        recorder = KeyboardRecorder(writer, safety)
        print(f"recording {args.source} into {writer.path}; arrow keys drive and label, space = e-stop, "
              "Esc = quit", flush=True)
        try:
            ended = run_recording(client, recorder, window, duration_s=duration)
        except KeyboardInterrupt:
            ended = "Ctrl-C"
        writer.update_meta({"stream": dict(client.stats), "recorder": dict(recorder.stats),
                            "stops": safety.stop_count})
    finally:
        link.close()  # the car first
        client.close()
        if window is not None:
            window.close()
        if writer is not None:
            writer.close()
    summary = {"session": str(writer.path), "ended": ended, "frames_recorded": recorder.stats["recorded"],
               "labels": dict(recorder.label_counts), "recorder": dict(recorder.stats),
               "stream": dict(client.stats), "link": dict(link.stats), **safety.summary()}
    print(f"recorded {summary['frames_recorded']} frames into {writer.path} ({ended}); labels "
          f"{summary['labels']}; {safety.stop_count} stop(s)", flush=True)
    _write_json(getattr(args, "json", None), summary)
    return 0


# ---- driving by prediction --------------------------------------------------------------------------


@dataclass
class DriveStep:
    """What :meth:`PilotDriver.step` did."""

    label: str | None  #: the pilot's choice (None without a new frame)
    confidence: float | None
    sent: str | None  #: label sent, "stop", or None
    reason: str | None
    latency_ms: float | None = None  #: capture of the frame to the command acknowledged


@dataclass
class DriveStats:
    decisions: int = 0
    commands: int = 0
    bad_frames: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))  #: capture -> command acked
    transit_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))  #: capture -> frame received
    decode_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))  #: JPEG -> pixels
    decide_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))  #: preprocess + network
    frame_age_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))  #: at the decision
    started: float = field(default_factory=time.monotonic)


class PilotDriver:
    """Frames from the stream -> :class:`~scratchpilot.car.pilot.Pilot` -> :class:`SafetyLayer` -> car.

    The pilot is the simulator's: the model's stored preprocessing spec turns the frame into its input,
    so driving sees frames as training did.

    Parameters
    ----------
    pilot : Pilot
        ``decide(image) -> (label, confidence, probabilities)``.
    safety : SafetyLayer
        Holds the stream client and the car link.
    """

    def __init__(self, pilot, safety: SafetyLayer):
        self.pilot = pilot
        self.safety = safety
        self.last_frame: Frame | None = None
        self.last_image: np.ndarray | None = None
        self.last_decision: tuple[str, float] | None = None
        self.stats = DriveStats()
        self._warm_up()

    def _warm_up(self) -> None:
        """Decode one JPEG and decide once before the first real frame: the first call of each pays
        for lazy imports and buffer allocation (~100 ms), enough to make that frame stale."""
        from .stream import decode_jpeg, encode_jpeg

        decode_jpeg(encode_jpeg(np.zeros((16, 16, 3), dtype=np.uint8)))
        shape = getattr(getattr(self.pilot, "preprocess", None), "input_shape", None)
        if shape is not None:
            self.pilot.decide(np.zeros(shape, dtype=np.uint8))
        self._reset_pilot()

    def _reset_pilot(self) -> None:
        if hasattr(self.pilot, "reset"):  # a pilot with frame history forgets frames from before a gap
            self.pilot.reset()

    def step(self, frame: Frame | None) -> DriveStep:
        """Handle a new ``frame``, or (None) check that the newest one is still fresh."""
        safety = self.safety
        if frame is None:
            reason = safety.check(self.last_frame)
            return DriveStep(None, None, safety.act(None, reason, self.last_frame), safety.reason)
        self.last_frame = frame
        if safety.estopped:
            safety.act(None, "e-stop pressed", frame)
            return DriveStep(None, None, None, safety.reason)
        started = time.perf_counter()
        try:
            image = frame.image()
        except StreamProtocolError as exc:
            self.stats.bad_frames += 1
            reason = safety.check(frame) or f"bad frame ({exc})"
            return DriveStep(None, None, safety.act(None, reason, frame), safety.reason)
        self.last_image = image
        self.stats.decode_ms.append((time.perf_counter() - started) * 1000)
        self.stats.transit_ms.append(frame.transit_s * 1000)
        if _reason_kind(safety.reason) in ("stream lost", "no frame yet"):
            self._reset_pilot()
        started = time.perf_counter()
        label, confidence, _ = self.pilot.decide(image)
        self.stats.decide_ms.append((time.perf_counter() - started) * 1000)
        self.stats.decisions += 1
        self.stats.frame_age_ms.append(frame.age_s() * 1000)
        self.last_decision = (label, confidence)
        # checked after deciding: a slow decision can make the frame too old to act on
        reason = safety.check(frame, confidence)
        sent = safety.act(label, reason, frame)
        latency = None
        if sent == label:
            latency = (time.time_ns() - frame.capture_ns) / 1e6
            self.stats.latency_ms.append(latency)
            self.stats.commands += 1
            self.stats.labels[label] = self.stats.labels.get(label, 0) + 1
        return DriveStep(label, confidence, sent, safety.reason, latency)

    def summary(self) -> dict[str, Any]:
        stats = self.stats
        seconds = time.monotonic() - stats.started
        return {"decisions": stats.decisions, "commands": stats.commands, "bad_frames": stats.bad_frames,
                "seconds": round(seconds, 3), "decisions_per_s": round(stats.decisions / max(seconds, 1e-9), 2),
                "labels": dict(stats.labels),
                "latency_ms": _percentiles(stats.latency_ms, 50, 99),
                "transit_ms": _percentiles(stats.transit_ms, 50, 99),
                "decode_ms": _percentiles(stats.decode_ms, 50, 99),
                "decide_ms": _percentiles(stats.decide_ms, 50, 99),
                "frame_age_ms": _percentiles(stats.frame_age_ms, 50, 99),
                **self.safety.summary()}


def run_driving(client: StreamClient, driver: PilotDriver, window, *, duration_s: float | None = None,
                stop_event: threading.Event | None = None) -> str:
    """The drive loop: until quit/duration/``stop_event``; the car link is not closed here."""

    def lines() -> list[tuple[str, tuple[int, int, int]]]:
        decision = driver.last_decision
        text = "pilot: -" if decision is None else f"pilot: {decision[0]} ({decision[1]:.2f})"
        age = "" if driver.last_frame is None else f"   frame age {driver.last_frame.age_s() * 1000:.0f} ms"
        return [(text + age, _WHITE), _stop_line(driver.safety)]

    def on_frame(frame: Frame, controls: Controls) -> None:
        driver.step(frame)
        window.show(driver.last_image, lines())

    def on_idle(controls: Controls) -> None:
        before = driver.safety.reason
        driver.step(None)
        if driver.safety.reason != before:
            window.show(None, lines())

    return _run_loop(client, on_frame, on_idle, window, duration_s=duration_s, stop_event=stop_event,
                     on_estop=driver.safety.emergency_stop)


def cmd_drive(args) -> int:
    """``car drive --model M --source tcp://PI:8000 (--serial PORT | --dry-run)``: the network drives."""
    from .. import nn
    from .pilot import Pilot
    from .preprocess import PreprocessSpecError

    _setup_logging()
    if not args.dry_run and not args.serial:
        raise _command_error("driving the real car needs --serial PORT (the Arduino), or --dry-run to only "
                             "show the commands")
    if args.max_frame_age is not None and not args.max_frame_age > 0:
        raise _command_error(f"--max-frame-age must be positive seconds, got {args.max_frame_age}")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise _command_error(f"--min-confidence must be between 0 and 1, got {args.min_confidence}")
    try:
        pilot = Pilot.load(args.model)
    except (nn.ModelFileError, ValueError, OSError) as exc:
        raise _command_error(f"{args.model}: {exc}") from None
    gate = SafetyGate(max_frame_age=args.max_frame_age, min_confidence=args.min_confidence or None)
    address = _stream_address(args.source)
    link = _open_link(args, dry_run=args.dry_run)
    client = StreamClient(*address).start()
    window = None
    ended = "error"
    try:
        window = _open_window(f"scratchpilot drive  {args.source}", not getattr(args, "no_window", False))
        driver = PilotDriver(pilot, SafetyLayer(client, link, gate))
        target = "dry run, nothing is sent" if args.dry_run else f"serial {args.serial}"
        print(f"driving from {args.source} ({target}); "
              + ("space = e-stop, Esc = quit" if isinstance(window, CarWindow) else "Ctrl-C = stop"), flush=True)
        try:
            ended = run_driving(client, driver, window, duration_s=getattr(args, "duration", None))
        except KeyboardInterrupt:
            ended = "Ctrl-C"
        except PreprocessSpecError as exc:
            raise _command_error(f"{args.model}: {exc}") from None
    finally:
        link.close()  # the car first
        client.close()
        if window is not None:
            window.close()
    summary = {"model": str(args.model), "source": args.source, "serial": args.serial, "dry_run": args.dry_run,
               "ended": ended, "max_frame_age_s": args.max_frame_age, "min_confidence": args.min_confidence,
               **driver.summary(), "stream": dict(client.stats), "link": dict(link.stats),
               "serial_round_trip_ms": _percentiles(getattr(link, "round_trip_ms", ()), 50, 99)}
    latency = summary["latency_ms"]
    print(f"{summary['commands']} commands from {summary['decisions']} decisions "
          f"({summary['decisions_per_s']:.1f}/s), latency p50 {latency['p50']} ms p99 {latency['p99']} ms, "
          f"{summary['stops_total']} stop(s); ended: {ended}", flush=True)
    for stop in summary["stops"][:20]:
        print(f"  stop at {stop['t_s']:.2f} s (frame {stop['frame']}): {stop['reason']}", flush=True)
    _write_json(getattr(args, "json", None), summary)
    return 0
