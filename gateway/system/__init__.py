"""The OS image's side of the config: files rendered for systemd-networkd, hostapd, pppd."""
