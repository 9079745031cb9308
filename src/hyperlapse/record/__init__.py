"""Recording a training run: the training-thread capture, schedules, the background writer.

* :mod:`~hyperlapse.record.recorder`: :class:`TrajectoryRecorder` (public as
  ``hyperlapse.TrajectoryRecorder``), the training thread's API;
* :mod:`~hyperlapse.record.config`: :class:`RecorderConfig`, every option validated once
  (public as ``hyperlapse.RecorderConfig``; the trainer adapters take it too);
* :mod:`~hyperlapse.record.pipeline`: capture -> write -> commit (threads, backpressure,
  the error slot, the counters);
* :mod:`~hyperlapse.record.lifetime`: interpreter exit, SIGTERM, a recorder dropped unclosed;
* :mod:`~hyperlapse.record.opening`: what ``mode`` does with a store already at the path;
* :mod:`~hyperlapse.record.capture`: one copy of all parameters into a preallocated buffer;
* :mod:`~hyperlapse.record.schedule`: which optimizer steps get a snapshot.
"""
