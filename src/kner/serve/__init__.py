"""HTTP extraction service (``kner serve``): FastAPI + uvicorn around an extractor.

Needs the ``serve`` extra (``pip install "kner[serve]"``); importing this package
does not import FastAPI, only :func:`create_app` and :class:`BackgroundServer` do.
"""

from kner.serve.app import create_app, entity_dict
from kner.serve.limits import RequestError, ServeSettings
from kner.serve.scheduler import ExtractionError, QueueFull, Scheduler, SchedulerStats
from kner.serve.server import BackgroundServer, port_problem

__all__ = [
    "create_app",
    "entity_dict",
    "Scheduler",
    "SchedulerStats",
    "ExtractionError",
    "QueueFull",
    "RequestError",
    "ServeSettings",
    "BackgroundServer",
    "port_problem",
]
