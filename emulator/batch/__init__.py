"""The local Cloud Batch runner: `jobspec` (the Job JSON it accepts), `runner` (processes)."""
