"""AMQP_URL naming a cluster's nodes: each URL is tried in turn, and production checks each one's secret."""

import pytest
from pydantic import ValidationError

from common.settings import Profile, ServiceSettings

NODES = (
    "amqp://app:s3cret-one@rabbit-1:5672/, amqp://app:s3cret-one@rabbit-2:5672/,amqp://app:s3cret-one@rabbit-3:5672/"
)


def test_a_comma_separated_amqp_url_is_every_node_in_order() -> None:
    settings = ServiceSettings(amqp_url=NODES)

    assert settings.amqp_urls == [
        "amqp://app:s3cret-one@rabbit-1:5672/",
        "amqp://app:s3cret-one@rabbit-2:5672/",
        "amqp://app:s3cret-one@rabbit-3:5672/",
    ]
    assert ServiceSettings().amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_production_accepts_a_cluster_whose_every_url_has_its_own_secret() -> None:
    settings = ServiceSettings(messaging_profile=Profile.PRODUCTION, bind_host="0.0.0.0", amqp_url=NODES)

    assert len(settings.amqp_urls) == 3


def test_production_refuses_a_cluster_with_one_node_left_on_the_guest_login() -> None:
    with pytest.raises(ValidationError, match="AMQP_URL"):
        ServiceSettings(
            messaging_profile=Profile.PRODUCTION,
            bind_host="0.0.0.0",
            amqp_url=NODES.replace("app:s3cret-one@rabbit-3", "guest:guest@rabbit-3"),
        )
