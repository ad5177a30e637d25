"""The bottom layer: atomic writes, the path guard, progress bars, system facts, shards,
processes and schedules."""
