"""Recording a training run: the training-thread capture, schedules, the background writer.

* :mod:`~hyperlapse.record.recorder`: :class:`TrajectoryRecorder` (public as
  ``hyperlapse.TrajectoryRecorder``);
* :mod:`~hyperlapse.record.capture`: one copy of all parameters into a preallocated buffer;
* :mod:`~hyperlapse.record.schedule`: which optimizer steps get a snapshot.
"""
