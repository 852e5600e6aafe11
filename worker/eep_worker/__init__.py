"""The worker runtime: Mooncake process-group recovery, rejoin, expert-location broadcast, a reference MoE
server.

Entry point: `eep-worker serve` (`eep_worker.__main__`). Only `eep_worker.mooncake` imports mooncake.
"""
