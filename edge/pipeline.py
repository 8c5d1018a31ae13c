"""The ordered pipeline of one station: frames in capture order, answers out in the same order.

Capture puts frames in; each gets a ticket, 0, 1, 2, ..., the moment it enters. Inference
workers take frames and finish them with an Answer; an answer that needs no inspection (a trigger
that got no frame, a frame dropped to keep up, a part left at a stop) takes its ticket here too.
The publisher takes answers in ticket order only. So every part is answered exactly once and in
the order it was captured, whichever worker finished first, and nothing leaves by a side door.

Live cameras drop the oldest waiting frame when inference falls behind (answered, counted);
files and folders are not live, so their put() waits instead and no part is skipped.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from edge.answer import DROPPED, LEFT_AT_STOP, Answer
from edge.capture import Frame

# Builds the answer of a frame that was not inspected, with the reason.
Unanswered = Callable[[Frame, str], Answer]


class OrderedPipeline:
    def __init__(self, size: int, not_inspected: Unanswered):
        self.size = size
        self.not_inspected = not_inspected
        # One lock, three conditions: each waiter is woken only by what it waits for (a 2-core
        # line PC runs two inference workers; every spurious wake-up competes for the GIL).
        self.lock = threading.Lock()
        self.frame_queued = threading.Condition(self.lock)  # workers wait here
        self.room_made = threading.Condition(self.lock)  # a blocking put waits here
        self.answer_ready = threading.Condition(self.lock)  # the publisher waits here
        self.queued: collections.deque[tuple[int, Frame]] = collections.deque()
        self.taken: dict[int, Frame] = {}  # handed to a worker, not finished
        self.answers: dict[int, Answer] = {}  # finished, waiting for an earlier ticket
        self.next_ticket = 0
        self.next_out = 0
        self.input_ended = False
        self.closed_at: float | None = None

    # -- capture side -------------------------------------------------------------------------
    def put(self, frame: Frame, blocking: bool) -> int:
        """Queue a frame; returns how many of the oldest were dropped to make room. A blocking
        put waits for room (a file's part is never dropped) until close(), after which the frame
        is answered as not inspected at once."""
        with self.lock:
            while blocking and len(self.queued) >= self.size and self.closed_at is None:
                self.room_made.wait(0.2)
            ticket = self._ticket()
            if self.closed_at is not None:
                self.answers[ticket] = self.not_inspected(frame, LEFT_AT_STOP)
                self.answer_ready.notify()
                return 0
            dropped = 0
            while not blocking and len(self.queued) >= self.size:
                old_ticket, old = self.queued.popleft()
                self.answers[old_ticket] = self.not_inspected(old, DROPPED)
                dropped += 1
            self.queued.append((ticket, frame))
            self.frame_queued.notify()
            if dropped:
                self.answer_ready.notify()
            return dropped

    def answer(self, answer: Answer) -> None:
        """An answer that needs no inspection, in its place in capture order."""
        with self.lock:
            self.answers[self._ticket()] = answer
            self.answer_ready.notify()

    def end_input(self) -> None:
        """Capture has ended: no more frames will come."""
        with self.lock:
            self.input_ended = True
            self._notify_everyone()

    # -- inference side -----------------------------------------------------------------------
    def take(self, timeout: float) -> tuple[int, Frame] | None:
        """(ticket, oldest frame), or None after `timeout` with nothing to take."""
        with self.lock:
            if not self.queued and not self.exhausted and timeout > 0:
                self.frame_queued.wait(timeout)
            if not self.queued or self.closed_at is not None:
                return None
            ticket, frame = self.queued.popleft()
            self.taken[ticket] = frame
            self.room_made.notify()
            return ticket, frame

    def finish(self, ticket: int, answer: Answer) -> bool:
        """A worker's answer; False if a stop already answered for the part (it is not sent twice)."""
        with self.lock:
            if self.taken.pop(ticket, None) is None:
                return False
            self.answers[ticket] = answer
            if ticket == self.next_out:  # a later ticket waits for this one anyway
                self.answer_ready.notify()
            return True

    @property
    def exhausted(self) -> bool:
        """Nothing more for workers to take, now or later."""
        return self.closed_at is not None or (self.input_ended and not self.queued)

    # -- publisher side -----------------------------------------------------------------------
    def ready(self, timeout: float) -> list[Answer]:
        """The answers whose turn has come, in ticket order; waits up to `timeout` for one."""
        with self.lock:
            if self.next_out not in self.answers and not self.drained and timeout > 0:
                self.answer_ready.wait(timeout)
            out = []
            while self.next_out in self.answers:
                out.append(self.answers.pop(self.next_out))
                self.next_out += 1
            return out

    @property
    def drained(self) -> bool:
        """Capture has ended and every part it delivered has been handed to the publisher."""
        return self.input_ended and self.next_out == self.next_ticket

    def close(self) -> int:
        """A stop that cannot wait any longer: every part queued or being inspected is answered
        as not inspected, in one step under the lock, so none falls between. A worker finishing
        one of them later is ignored. Returns how many parts were left."""
        with self.lock:
            self.closed_at = time.monotonic()
            left = [*self.taken.items(), *self.queued]
            for ticket, frame in left:
                self.answers[ticket] = self.not_inspected(frame, LEFT_AT_STOP)
            self.taken.clear()
            self.queued.clear()
            self._notify_everyone()
            return len(left)

    def closed_for(self) -> float:
        """Seconds since close(); 0 while open."""
        closed_at = self.closed_at
        return 0.0 if closed_at is None else time.monotonic() - closed_at

    def _notify_everyone(self) -> None:
        """An end or a close: every waiter has something to re-check."""
        for condition in (self.frame_queued, self.room_made, self.answer_ready):
            condition.notify_all()

    def _ticket(self) -> int:
        ticket, self.next_ticket = self.next_ticket, self.next_ticket + 1
        return ticket

    def __len__(self) -> int:
        with self.lock:
            return len(self.queued)
