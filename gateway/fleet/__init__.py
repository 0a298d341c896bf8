"""`desanet fleet`: the operator's side of the MQTT tree (docs/mqtt.md)."""
