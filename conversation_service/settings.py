from typing import Self

from pydantic import Field, model_validator

from common.settings import DatabaseSettings, ServiceSettings


class ConversationSettings(ServiceSettings, DatabaseSettings):
    conversation_service_port: int = 8083
    default_page_size: int = Field(50, ge=1, description="Page size of a list read that names no `limit`")
    max_page_size: int = Field(200, ge=1, description="Largest `limit` a list read accepts")
    database_retry_seconds: float = Field(
        15.0,
        gt=0,
        description="How long a write keeps retrying a lost database connection before the message goes "
        "back to the queue",
    )

    @model_validator(mode="after")
    def default_page_fits(self) -> Self:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self
