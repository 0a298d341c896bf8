"""Reports to the region's MQTT broker (docs/mqtt.md): a transport beside control/ and portal/."""
