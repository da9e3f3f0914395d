"""The daemon's control server: the control page, its API, /status and /metrics.

``security`` is imported by the config validator, so this package imports nothing heavy
(aiohttp, prometheus_client) at the top level.
"""
