"""A real network camera for the tests: an HTTP server streaming JPEG frames as
multipart/x-mixed-replace (what IP cameras serve as MJPEG), read by OpenCV's FFmpeg backend over
TCP exactly as a camera on the line network would be. It can be stopped (the camera is switched
off: connections closed, port refused) and stalled (the cable is pulled: connections stay open
and nothing more arrives)."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from tests.mqtt_helpers import free_port


class MjpegCamera:
    def __init__(self, images: list[np.ndarray], fps: float = 20.0, port: int | None = None):
        self.jpegs = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for image in images]
        self.fps = fps
        self.port = port or free_port()
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.flowing = threading.Event()
        self.frames_sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegCamera":
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                with camera.lock:
                    camera.connections.add(self.connection)
                try:
                    camera._serve(self.wfile)
                finally:
                    with camera.lock:
                        camera.connections.discard(self.connection)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.flowing.set()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def _serve(self, out) -> None:
        server = self.server
        index = 0
        while self.server is server:
            if not self.flowing.wait(0.1):
                continue
            jpeg = self.jpegs[index % len(self.jpegs)]
            try:
                out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                out.flush()
            except OSError:
                return
            index += 1
            self.frames_sent += 1
            time.sleep(1.0 / self.fps)

    def stop(self) -> None:
        """Switched off: the listening port closes and open connections are cut."""
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            for connection in list(self.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stall(self) -> None:
        """Cable pulled: the TCP connection stays up, no more bytes arrive."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()
