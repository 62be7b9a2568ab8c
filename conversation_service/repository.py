"""The conversation store: the writes of message events and the reads of the API, on one database.

Each job has its file: `database` (pool, retries, compiled statements), `writes`, `reads`.
"""

from aiopg.sa import Engine

from common.metrics import Metrics
from conversation_service.database import Database
from conversation_service.reads import MessageReader
from conversation_service.writes import MessageWriter


class MessageRepository(MessageWriter, MessageReader):
    def __init__(
        self,
        engine: Engine,
        *,
        retry_max_interval: float,
        read_retry_seconds: float = 1.0,
        receipt_clock_skew_seconds: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        database = Database(
            engine, retry_max_interval=retry_max_interval, read_retry_seconds=read_retry_seconds, metrics=metrics
        )
        MessageWriter.__init__(self, database, receipt_clock_skew_seconds=receipt_clock_skew_seconds)
        MessageReader.__init__(self, database)

    async def is_available(self) -> bool:
        return await self._database.is_available()
