"""Structured logs, one event per line, with whatever `extra=` fields a call passes and the request's
context (`common.context`).

JSON for machines (the default); `text` for a person watching bin/start.sh in a terminal.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from common.context import ContextFilter
from common.settings import ProcessSettings

_STANDARD_ATTRIBUTES = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            # What orjson refuses and json writes: a lone surrogate from a client's bytes, an int past 64 bits.
            return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    # The access log's message already is the request line; its extra fields would say it twice.
    _FIELDS_SAID_IN_MESSAGE = frozenset({"aiohttp.access"})

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{time} {record.levelname:<7} {record.getMessage()}"
        if record.name not in self._FIELDS_SAID_IN_MESSAGE:
            line += "".join(f" {k}={v}" for k, v in _fields(record).items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(service: str, settings: ProcessSettings) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service) if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    # aio-pika's reconnect chatter is noise at INFO; its warnings still show.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger(__name__).info(
        f"{service} starting in the {settings.messaging_profile} profile",
        extra={"profile": settings.messaging_profile.value},
    )
