"""``scratchpilot car stream``: on the Pi, serve the camera over TCP until Ctrl-C."""

from __future__ import annotations

import time

from ...errors import CommandError
from .common import parse_size, setup_logging


def run(args) -> int:
    from ..hardware.cameras import open_camera
    from ..hardware.stream_protocol import CameraError
    from ..hardware.stream_server import StreamServer

    setup_logging()
    try:
        size = parse_size(args.size)
        if not args.fps > 0:
            raise ValueError(f"--fps must be positive, got {args.fps}")
        camera = open_camera(args.camera, size, args.fps)
    except (ValueError, CameraError) as exc:
        raise CommandError(str(exc)) from None
    # The simulator runs on its own clock: frames are stamped with the wall clock when they are read.
    server = StreamServer(camera, args.host, args.port, use_source_timestamp=args.camera != "sim")
    try:
        server.start()
    except OSError as exc:
        camera.close()
        raise CommandError(f"{exc} (is another stream already running? try --port)") from None
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
