"""What the gateway knows about its LAN: who is behind an address."""
