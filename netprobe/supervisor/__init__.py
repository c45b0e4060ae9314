"""The daemon: one worker process per probe instance, results fanned out to sinks."""
