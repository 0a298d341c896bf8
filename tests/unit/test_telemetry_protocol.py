"""The ``[telemetry] protocol`` setting (the MQTT version; docs/mqtt.md "MQTT 3.1.1")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.telemetry import Telemetry


def test_auto_is_the_default() -> None:
    assert Telemetry().protocol == "auto"


@pytest.mark.parametrize(("given", "kept"), [("auto", "auto"), ("5", "5"), (5, "5"), ("5.0", "5"),
                                             ("3.1.1", "3.1.1"), ("311", "3.1.1"), (" 5 ", "5")])
def test_the_versions_it_takes(given: object, kept: str) -> None:
    assert Telemetry(protocol=given).protocol == kept


@pytest.mark.parametrize("given", ["4", "3.1", "mqttv5", "", True, 3.1])
def test_other_versions_are_refused_naming_the_choices(given: object) -> None:
    with pytest.raises(ValidationError, match='not an MQTT protocol version; write "auto"'):
        Telemetry(protocol=given)
