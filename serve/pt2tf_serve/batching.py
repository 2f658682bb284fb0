"""Server-side batching with TF Serving's semantics: one shared scheduler, a queue per version and signature.

As TF Serving's SharedBatchScheduler and BatchingSession:
- requests for one model version and signature, from REST and gRPC alike, join an open batch
  while it has room; a batch runs when it is full or `batch_timeout_micros` after its first
  request, on one of `num_batch_threads` threads shared by every queue;
- each queue holds at most `max_enqueued_batches` batches: a request that needs one more is
  refused at once with UNAVAILABLE instead of waiting;
- a batch is padded up to the next of `allowed_batch_sizes` with copies of its first row, and
  the padding is cut off before answers go back;
- a request larger than a batch is refused, or split into batch-sized parts and reassembled
  when `enable_large_batch_splitting` is on.

Measured before choosing this over TensorFlow's in-graph batch op: that op ran 5× slower per
call here (see the project's DESIGN.md); a Python queue in front of Session.run costs well under
a millisecond per batch, and Session.run releases the GIL while it computes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from .config import Batching
from .status import ServingError

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"

# (batch inputs, padded size) → outputs, each with the padded batch on axis 0
RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class QueueClosed(Exception):
    """The queue closed (its version is unloading) after the caller took it; the caller still holds the version."""


@dataclass
class BatchStats:
    """What one processed batch looked like; the metrics exporter records it."""

    input_size: int  # rows from requests
    padded_size: int  # rows actually run
    queuing_seconds: list[float]  # per request: enqueue → batch start


@dataclass(eq=False)  # tasks and batches are found by identity; their arrays do not compare
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: Future
    enqueued: float = field(default_factory=time.monotonic)
    batch: _Batch | None = None


@dataclass(eq=False)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)
    taken: bool = False  # by a batch thread (or by closing): its tasks can no longer leave it


def _concat(parts: list[dict[str, np.ndarray]], pad_variable_length: bool = False) -> dict[str, np.ndarray]:
    """Requests' inputs joined along the batch axis (padded at the end of other axes when allowed)."""
    if len(parts) == 1:
        return dict(parts[0])
    joined = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        shapes = {t.shape[1:] for t in tensors}
        if len(shapes) > 1:
            if not pad_variable_length:
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Tensors with name '{key}' from different tasks have different shapes and padding is turned "
                    "off. Set pad_variable_length_inputs to true, or ensure that all tensors with the same name "
                    "have equal dimensions starting with the first dim.",
                )
            tensors = _pad_to_common_shape(tensors)
        joined[key] = np.concatenate(tensors)
    return joined


def _pad_to_common_shape(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """Pad each tensor at the end of axes 1.. to the largest size, with its own first element (as TF Serving)."""
    target = np.max([t.shape for t in tensors], axis=0)
    padded = []
    for tensor in tensors:
        if tensor.size == 0:
            raise ServingError("FAILED_PRECONDITION", "Got empty tensor in batch of non-empty tensors.")
        widths = [(0, 0)] + [(0, int(want - have)) for want, have in zip(target[1:], tensor.shape[1:], strict=True)]
        padded.append(np.pad(tensor, widths, constant_values=tensor.flat[0]))
    return padded


class BatchQueue:
    """The queue of one model version's signature; created and served by a SharedBatchScheduler."""

    def __init__(self, scheduler: SharedBatchScheduler, options: Batching, run: RunBatch, name: str):
        self._scheduler = scheduler
        self.options = options
        self._run = run
        self.name = name
        self._open: _Batch | None = None
        self._closed: deque[_Batch] = deque()
        self._in_flight = 0  # batches taken by a thread and not finished
        self.closed_for_good = False

    # -- called with the scheduler's lock held

    def _enqueued_batches(self) -> int:
        return len(self._closed) + (1 if self._open else 0)

    def _ready(self, now: float) -> _Batch | None:
        batch = None
        if self._closed:
            batch = self._closed.popleft()
        elif self._open and now - self._open.opened >= self.options.batch_timeout_micros / 1e6:
            batch, self._open = self._open, None
        if batch is not None:
            batch.taken = True
        return batch

    def _withdraw(self, task: _Task) -> None:
        """Take a cancelled task out of its batch while it waits, so its rows go to the next caller."""
        batch = task.batch
        if batch is None or batch.taken:
            return  # a thread has the batch: it skips the cancelled task itself
        batch.tasks = [t for t in batch.tasks if t is not task]
        batch.size -= task.size
        if not batch.tasks:
            if batch is self._open:
                self._open = None
            else:
                self._closed.remove(batch)

    def _deadline(self) -> float | None:
        if self._closed:
            return 0.0
        if self._open:
            return self._open.opened + self.options.batch_timeout_micros / 1e6
        return None

    def full(self) -> bool:
        """No room for even one more row now: every request would be refused (read without the lock: a hint)."""
        open_batch = self._open
        has_room = open_batch is not None and open_batch.size < self.options.execution_batch_size
        return not has_room and self._enqueued_batches() >= self.options.max_enqueued_batches

    def _add(self, tasks: list[_Task]) -> None:
        limit = self.options.execution_batch_size
        new_batches = 0
        room = limit - self._open.size if self._open else 0
        for task in tasks:
            if task.size > room:
                new_batches += 1
                room = limit
            room -= task.size
        if new_batches and self._enqueued_batches() + new_batches > self.options.max_enqueued_batches:
            raise ServingError(
                "UNAVAILABLE",
                f"{QUEUE_FULL}; currently {self._enqueued_batches()} batches enqueued and max_enqueued_batches is "
                f"{self.options.max_enqueued_batches}",
            )
        for task in tasks:
            if self._open is None or self._open.size + task.size > limit:
                if self._open is not None:
                    self._closed.append(self._open)
                self._open = _Batch()
            self._open.tasks.append(task)
            self._open.size += task.size
            task.batch = self._open
            if self._open.size == limit:
                self._closed.append(self._open)
                self._open = None

    # -- public

    def submit(self, inputs: dict[str, np.ndarray], size: int) -> Future:
        """Queue a request of `size` rows; the future resolves to its outputs (or a ServingError)."""
        if size == 0:
            raise ServingError("INVALID_ARGUMENT", "Batching session Run() must have at least one input tensor row")
        limit = self.options.execution_batch_size
        if size > self.options.max_batch_size or (size > limit and not self.options.enable_large_batch_splitting):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}",
            )
        if size <= limit:
            tasks = [_Task(inputs, size, Future())]
            result = tasks[0].future
        else:
            tasks = [
                _Task({k: v[start : start + limit] for k, v in inputs.items()}, min(limit, size - start), Future())
                for start in range(0, size, limit)
            ]
            result = _gather([t.future for t in tasks])
        self._scheduler._enqueue(self, tasks)
        for task in tasks:
            task.future.add_done_callback(lambda future, task=task: self._scheduler._cancelled(self, task, future))
        return result

    def _process(self, batch: _Batch) -> BatchStats | None:
        started = time.monotonic()
        # A request whose caller gave up while it waited (a timeout cancelled its future) is not run.
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return None
        size = sum(t.size for t in tasks)
        padded = self._padded_size(size)
        stats = BatchStats(size, padded, [started - t.enqueued for t in tasks])
        try:
            self._execute(tasks)
        except Exception as exc:
            if len(tasks) == 1:
                tasks[0].future.set_exception(exc)
                return stats
            # One request's bad input (an undecodable image, say) would fail everyone batched with it,
            # as it does in TF Serving; run them one by one instead, so only that request fails.
            for task in tasks:
                try:
                    self._execute([task])
                except Exception as alone:
                    task.future.set_exception(alone)
        return stats

    def _execute(self, tasks: list[_Task]) -> None:
        """Run `tasks` as one batch, padded to an allowed size, and answer each with its own rows."""
        size = sum(t.size for t in tasks)
        inputs = _concat([t.inputs for t in tasks], self.options.pad_variable_length_inputs)
        padded = self._padded_size(size)
        if padded > size:  # TF Serving pads with copies of the first row of the last request
            inputs = {
                k: np.concatenate([v, np.repeat(tasks[-1].inputs[k][:1], padded - size, axis=0)])
                for k, v in inputs.items()
            }
        outputs = self._run(inputs)
        offset = 0
        for task in tasks:
            task.future.set_result({k: v[offset : offset + task.size] for k, v in outputs.items()})
            offset += task.size

    def _padded_size(self, size: int) -> int:
        for allowed in self.options.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking requests and wait until every queued batch has run; True when drained."""
        return self._scheduler._close(self, timeout)


def _gather(parts: list[Future]) -> Future:
    """A future of the parts' outputs concatenated in order (a split request reassembled).

    Cancelling it cancels the parts still queued, so a request given up on does not run.
    """
    whole: Future = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def part_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        errors = [p.exception() for p in parts if not p.cancelled() and p.exception() is not None]
        try:
            if errors:
                whole.set_exception(errors[0])
            else:
                whole.set_result(_concat([p.result() for p in parts]))
        except InvalidStateError:  # the caller cancelled it meanwhile
            pass

    def whole_done(future: Future) -> None:
        if future.cancelled():
            for part in parts:
                part.cancel()

    whole.add_done_callback(whole_done)
    for part in parts:
        part.add_done_callback(part_done)
    return whole


class SharedBatchScheduler:
    """`num_batch_threads` threads serving every BatchQueue, oldest ready batch first, round-robin."""

    def __init__(self, num_threads: int, on_batch: Callable[[BatchQueue, BatchStats], None] | None = None):
        self._lock = threading.Condition()
        self._queues: list[BatchQueue] = []
        self._next = 0
        self._stopping = False
        self._on_batch = on_batch
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-thread-{i}", daemon=True) for i in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(self, options: Batching, run: RunBatch, name: str) -> BatchQueue:
        queue = BatchQueue(self, options, run, name)
        with self._lock:
            self._queues.append(queue)
        return queue

    def _enqueue(self, queue: BatchQueue, tasks: list[_Task]) -> None:
        with self._lock:
            if queue.closed_for_good:
                raise QueueClosed(queue.name)
            if self._stopping:
                raise ServingError("UNAVAILABLE", "the server is shutting down")
            queue._add(tasks)
            self._lock.notify_all()  # not notify(): a closer waiting on the same condition must not swallow it

    def _cancelled(self, queue: BatchQueue, task: _Task, future: Future) -> None:
        if future.cancelled():
            with self._lock:
                queue._withdraw(task)

    def _take(self) -> tuple[BatchQueue, _Batch] | None:
        """The next batch to run, waiting for one; None when stopping. Called without the lock."""
        with self._lock:
            while True:
                now = time.monotonic()
                count = len(self._queues)
                for i in range(count):
                    queue = self._queues[(self._next + i) % count]
                    batch = queue._ready(now)
                    if batch is not None:
                        self._next = (self._next + i + 1) % count
                        queue._in_flight += 1
                        return queue, batch
                if self._stopping:
                    return None
                deadlines = [d for d in (q._deadline() for q in self._queues) if d is not None]
                self._lock.wait(timeout=max(0.0, min(deadlines) - now) if deadlines else None)

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            queue, batch = taken
            try:
                stats = queue._process(batch)
            except Exception as exc:  # e.g. inputs that cannot be concatenated: fail the batch, keep the thread
                stats = None
                for task in batch.tasks:
                    if not task.future.done():
                        task.future.set_exception(exc)
            with self._lock:
                queue._in_flight -= 1
                self._lock.notify_all()
            if self._on_batch is not None and stats is not None:
                self._on_batch(queue, stats)

    def _close(self, queue: BatchQueue, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            queue.closed_for_good = True
            if queue._open is not None:  # run what is waiting now rather than after its timeout
                queue._closed.append(queue._open)
                queue._open = None
            self._lock.notify_all()
            drained = True
            while queue._closed or queue._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    drained = False
                    break
                self._lock.wait(timeout=remaining)
            for batch in queue._closed:  # not run in time: answer them before their Session closes
                batch.taken = True
                for task in batch.tasks:
                    if task.future.set_running_or_notify_cancel():
                        task.future.set_exception(ServingError("UNAVAILABLE", f"{queue.name} unloaded first"))
            queue._closed.clear()
            self._queues.remove(queue)
            return drained

    def stop(self) -> None:
        """Run what is queued, then end the threads."""
        with self._lock:
            for queue in self._queues:
                if queue._open is not None:
                    queue._closed.append(queue._open)
                    queue._open = None
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
