"""When a folder run may start reading another slide: the memory bound of :mod:`flexunet.runtime.pipeline`."""
from __future__ import annotations

import threading
from typing import Callable


class Admission:
    """When a reader may start another slide (thread-safe).

    A slide is *in flight* from :meth:`start` until :meth:`written` or :meth:`dropped`, and
    *unbatched* until the batcher has copied its last tile into a batch.  A new slide may start
    while fewer than ``max_slides`` are in flight, or when the batcher cannot complete a batch
    otherwise: every slide in flight is unbatched, none is being read, and together they hold
    fewer than ``batch_size`` tiles.  So at most ``max(max_slides, batch_size)`` slides are in
    flight, and ``max_slides`` for slides of ``batch_size`` tiles or more.

    Args:
        max_slides: slides in flight, at most (small slides excepted, as above).
        batch_size: tiles per batch.
        poll: seconds between calls of the ``check`` of :meth:`start` while it waits.
    """

    def __init__(self, max_slides: int, batch_size: int, poll: float):
        self._cond = threading.Condition()
        self._poll = poll
        self._max_slides, self._batch_size = max_slides, batch_size
        self._slides = self._unbatched_slides = self._reading = self._unbatched_tiles = 0

    def _may_start(self) -> bool:
        if self._slides < self._max_slides:
            return True
        return (self._reading == 0 and self._unbatched_slides == self._slides
                and self._unbatched_tiles < self._batch_size)

    def start(self, check: Callable[[], None]) -> None:
        """Wait until a slide may be read, calling ``check`` (which raises to give up) meanwhile."""
        with self._cond:
            while not self._may_start():
                check()
                self._cond.wait(self._poll)
            self._slides += 1
            self._unbatched_slides += 1
            self._reading += 1

    def read(self, tiles: int) -> None:
        """The started slide was read and cut into ``tiles`` tiles."""
        with self._cond:
            self._reading -= 1
            self._unbatched_tiles += tiles
            self._cond.notify_all()

    def dropped(self) -> None:
        """The started slide could not be read."""
        with self._cond:
            self._reading -= 1
            self._unbatched_slides -= 1
            self._slides -= 1
            self._cond.notify_all()

    def batched(self, tiles: int, slides: int) -> None:
        """``tiles`` tiles went into a batch, the last ones of ``slides`` slides."""
        with self._cond:
            self._unbatched_tiles -= tiles
            self._unbatched_slides -= slides
            self._cond.notify_all()

    def written(self) -> None:
        """A slide's outputs are written."""
        with self._cond:
            self._slides -= 1
            self._cond.notify_all()
