"""Running a study: units, scheduling, the run loop, workers and stopping."""
