"""Cameras for the car: the Pi camera (picamera2), any OpenCV camera, a test pattern, and the simulator.

Each is a frame source: ``read() -> (image (H, W, 3) uint8 RGB, capture time in wall-clock seconds)``
and ``close()``. The camera libraries are imported when a camera is opened, never at module import.
"""

from __future__ import annotations

import time

import numpy as np

from .stream_protocol import CameraError


class TestPatternCamera:
    """A synthetic camera: moving stripes, a moving square and the frame number as a bar code.

    ``read()`` paces itself to ``fps`` (``None``: as fast as asked) and returns
    ``(image (H, W, 3) uint8 RGB, capture time in wall-clock seconds)``. The top band of the image
    holds the frame number as 16 black/white cells, large enough to survive JPEG;
    :meth:`frame_number` reads it back, so a test can check that a decoded image is the frame its
    header claims.
    """

    __test__ = False  # not a pytest test class, despite the name
    BITS = 16

    def __init__(self, size: tuple[int, int] = (320, 240), fps: float | None = 24.0):
        width, height = int(size[0]), int(size[1])
        if width < 64 or height < 48:
            raise ValueError(f"test pattern size {width}x{height} is below the 64x48 minimum")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive (or None for unpaced), got {fps}")
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0  #: frames produced so far; the next frame's number
        self.late_frames = 0  #: frame slots missed because the caller read too slowly
        self._cell_width = width // self.BITS
        self._band_height = max(8, height // 10)
        columns = np.arange(width, dtype=np.int32)[None, :]
        rows = np.arange(height, dtype=np.int32)[:, None]
        self._diagonal = columns + rows
        self._green = np.broadcast_to((columns * 255 // max(1, width - 1)).astype(np.uint8), (height, width))
        self._rows, self._columns = rows, columns
        self._next_deadline: float | None = None

    def read(self) -> tuple[np.ndarray, float]:
        self._pace()
        image = self.render(self.frames)
        self.frames += 1
        return image, time.time()

    def render(self, number: int) -> np.ndarray:
        """The pattern for frame ``number`` (deterministic)."""
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[..., 0] = np.where((self._diagonal + 6 * number) % 48 < 24, 220, 40)
        image[..., 1] = self._green
        image[..., 2] = np.where(np.abs(self._rows - (3 * number) % self.height) < 6, 255, 60)
        side = max(8, self.height // 6)
        left = (5 * number) % (self.width - side)
        top = self._band_height + (2 * number) % (self.height - self._band_height - side)
        image[top:top + side, left:left + side] = (255, 255, 0)
        for bit in range(self.BITS):
            value = 255 if (number >> bit) & 1 else 0
            image[:self._band_height, bit * self._cell_width:(bit + 1) * self._cell_width] = value
        return image

    def frame_number(self, image: np.ndarray) -> int:
        """Read the frame number back from an image (after JPEG) made by this camera's size."""
        quarter_w, quarter_h = self._cell_width // 4, self._band_height // 4
        number = 0
        for bit in range(self.BITS):
            left = bit * self._cell_width
            cell = image[quarter_h:self._band_height - quarter_h,
                         left + quarter_w:left + self._cell_width - quarter_w]
            if cell.mean() > 127:
                number |= 1 << bit
        return number

    def _pace(self) -> None:
        if self.fps is None:
            return
        now = time.monotonic()
        period = 1.0 / self.fps
        if self._next_deadline is None:
            self._next_deadline = now
        elif now < self._next_deadline:
            time.sleep(self._next_deadline - now)
        elif now - self._next_deadline > period:
            # Too slow a reader: skip the missed slots instead of bursting to catch up.
            missed = int((now - self._next_deadline) / period)
            self.late_frames += missed
            self._next_deadline += missed * period
        self._next_deadline += period

    def close(self) -> None:
        """Nothing to release; here for the camera interface."""


class OpenCVCamera:
    """A V4L2/USB camera through OpenCV (``opencv:0``); OpenCV is imported on construction."""

    def __init__(self, index: int = 0, size: tuple[int, int] = (320, 240), fps: float = 24.0):
        try:
            import cv2
        except ImportError as exc:
            raise CameraError("the opencv camera needs OpenCV: pip install opencv-python-headless "
                              "(or apt-get install python3-opencv)") from exc
        self._cv2 = cv2
        self._capture = cv2.VideoCapture(int(index))
        if not self._capture.isOpened():
            raise CameraError(f"OpenCV could not open camera {index} (is it plugged in? /dev/video{index})")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, int(size[0]))
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, int(size[1]))
        self._capture.set(cv2.CAP_PROP_FPS, float(fps))
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # do not let the driver queue stale frames
        self.index = int(index)

    def read(self) -> tuple[np.ndarray, float]:
        ok, bgr = self._capture.read()
        stamp = time.time()
        if not ok or bgr is None:
            raise CameraError(f"OpenCV camera {self.index} returned no frame")
        return np.ascontiguousarray(bgr[..., ::-1]), stamp

    def close(self) -> None:
        self._capture.release()


class Picamera2Camera:
    """The Raspberry Pi camera through picamera2 (only on Raspberry Pi OS; untested off a Pi)."""

    def __init__(self, size: tuple[int, int] = (320, 240), fps: float = 24.0):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError("picamera2 exists only on Raspberry Pi OS (sudo apt install python3-picamera2, "
                              "and create the venv with --system-site-packages); elsewhere use "
                              "--camera test-pattern or --camera opencv:0") from exc
        self._camera = Picamera2()
        config = self._camera.create_video_configuration(
            main={"size": (int(size[0]), int(size[1])), "format": "RGB888"},
            controls={"FrameRate": float(fps)}, buffer_count=2)
        self._camera.configure(config)
        self._camera.start()

    def read(self) -> tuple[np.ndarray, float]:
        array = self._camera.capture_array("main")
        stamp = time.time()
        # picamera2's "RGB888" is stored B, G, R per pixel (its documented quirk).
        return np.ascontiguousarray(array[..., 2::-1]), stamp

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()


def open_camera(spec: str, size: tuple[int, int] = (320, 240), fps: float = 24.0):
    """Open ``test-pattern``, ``opencv:N``, ``picamera2`` or ``sim`` (the simulator) as a frame source.

    ValueError names an unknown spec; CameraError says what to install for a missing backend.
    """
    if spec == "sim":
        try:
            from ..sim.camera import SimulatorCamera

            return SimulatorCamera(fps=fps)
        except ImportError as exc:
            raise CameraError(f"--camera sim needs the simulator: {exc}") from exc
    if spec == "test-pattern":
        return TestPatternCamera(size, fps)
    if spec == "picamera2":
        return Picamera2Camera(size, fps)
    if spec.startswith("opencv:"):
        index = spec.partition(":")[2]
        if not index.isdigit():
            raise ValueError(f"camera {spec!r}: expected opencv:N with a device number, e.g. opencv:0")
        return OpenCVCamera(int(index), size, fps)
    raise ValueError(f"unknown camera {spec!r}; expected test-pattern, opencv:N, picamera2 or sim")


