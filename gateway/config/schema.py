"""Typed schema of /etc/desanet/gateway.toml.

Every model forbids unknown keys: a misspelt key is an error, never silently
ignored. Durations and rates are stored as integers (seconds, bits/s) after
parsing. Cross-field checks live in model validators so that all problems
are still reported together by :mod:`gateway.config.loader`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.config.plans import Price, Quota, SharedDevices, check_limits
from gateway.config.telemetry import Telemetry
from gateway.config.units import (
    format_duration,
    format_rate,
    format_size,
    json_quote,
    parse_duration,
    parse_rate,
    parse_size,
    parse_time_of_day,
)
from gateway.timefmt import DEFAULT_TIMEZONE, is_known_zone

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _duration(value: object) -> int:
    return parse_duration(value)  # type: ignore[arg-type]


def _rate(value: object) -> int:
    return parse_rate(value)  # type: ignore[arg-type]


def _ifname(value: str) -> str:
    if not _IFNAME_RE.fullmatch(value):  # fullmatch: "$" would let a final newline in
        raise ValueError(f"{json_quote(value)} is not an interface name; write e.g. \"br-lan\" or \"eth0\"")
    return value


def normalize_mac(value: str) -> str:
    """Lower-case, colon-separated MAC; accepts '-' separators too."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise ValueError(f"{json_quote(value)} is not a MAC address; write e.g. \"02:00:00:aa:bb:cc\"")
    return mac


def normalize_hostname(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_HOST_LABEL_RE.match(x) for x in labels):
        raise ValueError(f"{json_quote(value)} is not a host name; write e.g. \"dukcapil.kemendagri.go.id\"")
    return host


def _ip_address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValueError(
            f"{json_quote(value)} is not an IP address; write e.g. \"192.0.2.53\""
        ) from None


def _ip_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError:
        raise ValueError(
            f"{json_quote(value)} is not a network with host bits zero; "
            "write e.g. \"203.0.113.10/32\" or \"2001:db8::/64\""
        ) from None


IPAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, PlainValidator(_ip_address)]
IPNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(_ip_network)]


# -- bounds (config): every duration, rate and size has a floor and a cap ---------------
# A value outside them is refused by `desanet config check`, apply and reload with the
# field path, instead of failing later deep inside nft, tc or SQLite (docs/configuration.md).
DAY = 86400
MAX_DURATION = 366 * DAY  # as the control API's durations: a year (and a leap day)
MIN_RATE = 8_000  # 1 kB/s: below this HTB's burst and quantum arithmetic degenerate
MAX_RATE = 100 * 10**9  # 100gbit: within tc's 64-bit rates (u64 bytes/s), above any uplink
MIN_SIZE = 1024
MAX_SIZE = 1024**5  # 1 PiB: far beyond any disk, far below SQLite's 64-bit integers


def within(low: int, high: int, show: Callable[[int], str], example: str) -> AfterValidator:
    """A validator refusing a parsed value outside [low, high] (None passes: unset)."""
    def check(value: int | None) -> int | None:
        if value is None:
            return None
        if value < low:
            raise ValueError(f"{show(value)} is below the least allowed here, {show(low)}; "
                             f"write e.g. {example}")
        if value > high:
            raise ValueError(f"{show(value)} is above the most allowed here, {show(high)}; "
                             f"write e.g. {example}")
        return value
    return AfterValidator(check)


def seconds_within(low: int, high: int, example: str) -> AfterValidator:
    return within(low, high, format_duration, example)


def _optional_rate(value: object) -> int | None:
    return None if value is None else _rate(value)


_RATE_BOUNDS = within(MIN_RATE, MAX_RATE, format_rate, '"10mbit"')
OptionalRate = Annotated[int | None, BeforeValidator(_optional_rate), _RATE_BOUNDS]
Duration = Annotated[int, BeforeValidator(_duration), seconds_within(1, MAX_DURATION, '"4h"')]
Rate = Annotated[int, BeforeValidator(_rate), _RATE_BOUNDS]
IfName = Annotated[str, AfterValidator(_ifname)]


def _unicast_mac(value: str) -> str:
    # Broadcast, multicast and all-zero addresses are no single device: as a trusted MAC
    # ff:ff:ff:ff:ff:ff would match frames no villager sends, or open the portal to some.
    if int(value[:2], 16) & 1 or value == "00:00:00:00:00:00":
        raise ValueError(f"{json_quote(value)} is a broadcast, multicast or zero MAC, not one "
                         'device; write a device\'s own MAC, e.g. "02:00:00:aa:bb:cc"')
    return value


Mac = Annotated[str, AfterValidator(normalize_mac), AfterValidator(_unicast_mac)]
Hostname = Annotated[str, AfterValidator(normalize_hostname)]


def normalize_garden_name(value: str) -> str:
    """A walled-garden name: an exact host name, or ``*.`` and a name for its subdomains
    (explicit only: a plain name never opens its subdomains)."""
    text = value.strip()
    if text.startswith("*."):
        try:
            return "*." + normalize_hostname(text[2:])
        except ValueError:
            raise ValueError(f"{json_quote(value)} is not a host name or a wildcard; write e.g. "
                             "\"dukcapil.kemendagri.go.id\" or \"*.kemendagri.go.id\"") from None
    return normalize_hostname(text)


GardenName = Annotated[str, AfterValidator(normalize_garden_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _timezone(value: str) -> str:
    if not is_known_zone(value):
        raise ValueError(f"unknown time zone {value!r}; use e.g. Asia/Jakarta (WIB), Asia/Makassar (WITA), "
                         "Asia/Jayapura (WIT)")
    return value


TimeZoneName = Annotated[str, AfterValidator(_timezone)]


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{json_quote(value)} is not an absolute path; write e.g. "
                         "\"/etc/desanet/tls/portal.crt\"")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
# sheet: the Wi-Fi name and key printed (and put in a join QR code) on the voucher sheet.
def _wifi_ssid(value: str) -> str:
    if len(value.encode("utf-8")) > 32 or any(not ch.isprintable() for ch in value):
        raise ValueError(f"{json_quote(value)} is not a Wi-Fi name: at most 32 bytes, no control "
                         'characters; write e.g. "Hotspot Desa"')
    return value


def _wifi_password(value: str) -> str:
    # WPA2/WPA3-Personal passphrases are 8-63 printable ASCII characters.
    if value and (not 8 <= len(value) <= 63 or any(not " " <= ch <= "~" for ch in value)):
        raise ValueError("a Wi-Fi password has 8 to 63 printable ASCII characters; "
                         'write e.g. "sukamaju2024", or "" for an open network')
    return value


def _wifi_country(value: str) -> str:
    # hostapd's country_code: the regulatory domain (channels, power) of the radio.
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise ValueError(f"{json_quote(value)} is not a country code: two upper-case letters "
                         '(ISO 3166-1 alpha-2); write e.g. "ID" for Indonesia')
    return value


WifiSsid = Annotated[str, AfterValidator(_wifi_ssid)]
WifiPassword = Annotated[str, AfterValidator(_wifi_password)]
WifiCountry = Annotated[str, AfterValidator(_wifi_country)]


def _plan_label(value: str) -> str:
    if not value.strip() or any(not ch.isprintable() for ch in value):
        raise ValueError('a plan label is printable text, e.g. "Paket Harian"')
    return value


PlanLabel = Annotated[str, Field(max_length=40), AfterValidator(_plan_label)]


def default_plan_label(name: str) -> str:
    """A label for a plan without one: "paket-harian" -> "Paket harian"."""
    words = name.replace("-", " ").strip()
    return words[:1].upper() + words[1:]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Section):
    name: str = Field(min_length=1, max_length=80, examples=["Hotspot Desa Sukamaju"])
    village: str = Field(min_length=1, max_length=80, examples=["Desa Sukamaju"])
    language: Literal["id", "en"] = Field("id", examples=["id"])
    contact: str = Field("", max_length=200, examples=["Kantor Desa, 0812-0000-0000"])
    # Every date a villager or staff member sees is local to this zone (WIB/WITA/WIT).
    timezone: TimeZoneName = Field(DEFAULT_TIMEZONE, examples=["Asia/Jakarta", "Asia/Makassar"])
    # sheet: printed on the voucher sheet with a Wi-Fi join QR code; "" prints neither.
    wifi_ssid: WifiSsid = Field("", examples=["Hotspot Desa Sukamaju"])
    # "" means an open network (the usual captive-portal hotspot); else WPA-Personal.
    wifi_password: WifiPassword = Field("", examples=["sukamaju2024"])
    # Step 9: hostapd's country_code (channels and power allowed); `desanet diag wifi`
    # compares it with the country hostapd runs with.
    wifi_country: WifiCountry = Field("ID", examples=["ID"])

    @model_validator(mode="after")
    def _password_needs_ssid(self) -> Site:
        if self.wifi_password and not self.wifi_ssid:
            raise PydanticCustomError(
                "wifi_password_without_ssid",
                'wifi_password is set but wifi_ssid is empty; write e.g. wifi_ssid = "Hotspot Desa"',
            )
        return self


# config: where a LAN may live. Loopback is accepted for tests that run the portal on one
# machine; a real box's LAN address is also checked against its interfaces at apply.
LAN_RANGES = tuple(ipaddress.IPv4Network(n) for n in
                   ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"))
LAN_PREFIXES = (16, 30)


def _lan_address(value: object) -> ipaddress.IPv4Interface:
    example = 'write it as a string with the prefix length, e.g. "10.42.0.1/24"'
    if isinstance(value, ipaddress.IPv4Interface):
        value = str(value)
    if not isinstance(value, str) or "/" not in value:
        # TOML's lan_address = 12345 would otherwise be read as 0.0.48.57/32.
        raise ValueError(f"{json_quote(value)} is not an IPv4 address with a prefix length; "
                         f"{example}")
    try:
        iface = ipaddress.IPv4Interface(value.strip())
    except ValueError:
        raise ValueError(f"{json_quote(value)} is not an IPv4 address with a prefix length; "
                         f"{example}") from None
    net, low, high = iface.network, *LAN_PREFIXES
    if not any(iface.ip in r for r in LAN_RANGES):
        raise ValueError(f"{json_quote(value)} is not a private address (10.0.0.0/8, "
                         f"172.16.0.0/12 or 192.168.0.0/16); {example}")
    if not low <= net.prefixlen <= high:
        raise ValueError(f"{json_quote(value)} has prefix /{net.prefixlen}; a LAN here is "
                         f"/{low} to /{high}; {example}")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{json_quote(value)} is the network's own or broadcast address, not a "
                         f"host; write e.g. \"{net.network_address + 1}/{net.prefixlen}\"")
    return iface


LanAddress = Annotated[ipaddress.IPv4Interface, PlainValidator(_lan_address)]


def _wan_host(value: object) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(str(value).strip()) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None:
        raise ValueError(f"{json_quote(value)} is not an IPv4 address; write e.g. \"192.0.2.1\"")
    _wan_usable(addr, value, '"192.0.2.1"')
    return addr


def _wan_usable(addr: ipaddress.IPv4Address, value: object, example: str) -> None:
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local \
            or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{json_quote(value)} is not a host on a network (loopback, "
                         f"link-local, multicast or no address); write e.g. {example}")


def _wan_interface(value: object) -> ipaddress.IPv4Interface:
    example = 'write the address with its prefix length, e.g. "192.0.2.10/24"'
    try:
        iface = ipaddress.IPv4Interface(value.strip()) \
            if isinstance(value, str) and "/" in value else None
    except ValueError:
        iface = None
    if iface is None:
        raise ValueError(f"{json_quote(value)} is not an IPv4 address with a prefix length; "
                         f"{example}")
    _wan_usable(iface.ip, value, '"192.0.2.10/24"')
    net = iface.network
    if net.prefixlen > 30:
        raise ValueError(f"{json_quote(value)} has prefix /{net.prefixlen}; the uplink's "
                         f"network needs room for a gateway (at most /30); {example}")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{json_quote(value)} is the network's own or broadcast address, not a "
                         f"host; write e.g. \"{net.network_address + 2}/{net.prefixlen}\"")
    return iface


def _pppoe_text(what: str, *, spaces: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        # Never the value in the message: the password is a secret, and these land in logs.
        bad = any(not ch.isprintable() or (ch.isspace() and not spaces) for ch in value)
        if len(value) > 255 or bad:
            raise ValueError(f"a PPPoE {what} is at most 255 printable characters"
                             f"{'' if spaces else ' without spaces'}; write the one the ISP gave")
        return value
    return check


WanHost = Annotated[ipaddress.IPv4Address, PlainValidator(_wan_host)]
WanInterface = Annotated[ipaddress.IPv4Interface, PlainValidator(_wan_interface)]
PppoeUsername = Annotated[str, AfterValidator(_pppoe_text("user name", spaces=False))]
PppoePassword = Annotated[str, AfterValidator(_pppoe_text("password", spaces=True))]


# pppd's link for network.wan_address = "pppoe" (the OS image's options name it so).
PPP_INTERFACE: Final = "ppp0"


class Network(_Section):
    lan_interface: IfName = Field(examples=["br-lan"])
    wan_interface: IfName = Field(examples=["eth0"])
    lan_address: LanAddress = Field(examples=["10.42.0.1/24"])
    # Only "drop" exists today: clients get no IPv6 and every IPv6 packet from
    # the LAN is dropped, so IPv6 can never bypass the portal.
    ipv6: Literal["drop"] = Field("drop", examples=["drop"])
    client_isolation: bool = Field(True, examples=[True])
    # Step 9: how the WAN interface gets its address (written out by the OS image; the
    # wan_* / pppoe_* fields of the other methods are kept but unused). Checked together
    # in wan_problems().
    wan_address: Literal["dhcp", "static", "pppoe"] = Field("dhcp", examples=["dhcp"])
    wan_static_address: WanInterface | None = Field(None, examples=["192.0.2.10/24"])
    wan_static_gateway: WanHost | None = Field(None, examples=["192.0.2.1"])
    wan_dns: list[WanHost] = Field(default_factory=list, examples=[["1.1.1.1", "8.8.8.8"]])
    pppoe_username: PppoeUsername = Field("", examples=["sukamaju@isp.example"])
    pppoe_password: PppoePassword = Field("", examples=["rahasia-isp"])

    @property
    def uplink_interface(self) -> str:
        """Where IP leaves for the internet: with PPPoE the link pppd brings up over the
        WAN port (the port itself then carries only PPPoE frames), else the port."""
        return PPP_INTERFACE if self.wan_address == "pppoe" else self.wan_interface


def wan_problems(network: Network) -> list[str]:
    """The WAN address method against the fields it needs; each line starts with its path."""
    problems = []
    method = network.wan_address
    address, gateway = network.wan_static_address, network.wan_static_gateway
    if method == "static":
        if address is None:
            problems.append('network.wan_static_address: required when network.wan_address = '
                            '"static"; write e.g. "192.0.2.10/24"')
        if gateway is None:
            problems.append('network.wan_static_gateway: required when network.wan_address = '
                            '"static"; write e.g. "192.0.2.1"')
        if address is not None and gateway is not None:
            net = address.network
            if gateway not in net or gateway in (net.network_address, net.broadcast_address,
                                                 address.ip):
                hint = net.network_address + (2 if address.ip == net.network_address + 1 else 1)
                problems.append(
                    f"network.wan_static_gateway: {gateway} is not another host of "
                    f"network.wan_static_address's network {net}; write e.g. \"{hint}\"")
        if address is not None and address.network.overlaps(network.lan_address.network):
            problems.append(f"network.wan_static_address: {address} overlaps the LAN "
                            f"(network.lan_address {network.lan_address.network}); the uplink "
                            "and the LAN need two networks")
    if method == "pppoe" and not network.pppoe_username:
        problems.append('network.pppoe_username: required when network.wan_address = "pppoe"; '
                        'write the user name the ISP gave, e.g. "sukamaju@isp.example"')
    for i, server in enumerate(network.wan_dns):
        if server == network.lan_address.ip:
            problems.append(f"network.wan_dns[{i}]: {server} is the gateway's own LAN address, "
                            'not an outside resolver; write e.g. "1.1.1.1"')
    return problems


class Dhcp(_Section):
    range_start: ipaddress.IPv4Address = Field(examples=["10.42.0.100"])
    range_end: ipaddress.IPv4Address = Field(examples=["10.42.0.250"])
    # dnsmasq refuses leases under 2 minutes
    lease_time: Annotated[Duration, seconds_within(120, 30 * DAY, '"12h"')] = Field(
        43200, examples=["12h"])
    upstream_dns: list[IPAddress] = Field(
        default_factory=list, examples=[["1.1.1.1", "8.8.8.8"]]
    )
    local_domain: str = Field("desa", pattern=r"^[a-z0-9-]{1,63}$", examples=["desa"])
    # lan: DHCP messages a second (and the burst) from MACs that hold no lease, all
    # together: a flood of invented MACs takes the pool in minutes, not seconds.
    new_client_rate: int = Field(4, ge=1, le=1000, examples=[4])
    new_client_burst: int = Field(40, ge=1, le=10000, examples=[40])


class Portal(_Section):
    mode: Literal["terms", "voucher", "both"] = Field("both", examples=["both"])
    hostname: Hostname = Field("portal.desa", examples=["portal.desa"])
    http_port: Port = Field(80, examples=[80])
    redirect_port: Port = Field(2050, examples=[2050])
    session_length: Duration = Field(4 * 3600, examples=["4h"])
    idle_timeout: Annotated[Duration, seconds_within(1, 30 * DAY, '"30m"')] = Field(
        30 * 60, examples=["30m"])
    voucher_attempts_per_minute: int = Field(5, ge=1, le=60, examples=[5])
    max_clients: int = Field(1000, ge=1, le=65000, examples=[1000])
    terms_id: str = Field(
        "Gunakan internet dengan bijak. Dilarang menyebarkan hoaks, judi, dan konten ilegal.",
        max_length=4000,
    )
    terms_en: str = Field(
        "Use the internet wisely. Spreading hoaxes, gambling and illegal content is forbidden.",
        max_length=4000,
    )
    # portal (Step 5): optional HTTPS for the portal and the RFC 8908 API; both or neither.
    # The files are checked (readable, PEM, key matches) when a config is applied.
    tls_certificate: AbsolutePath | None = Field(
        None, examples=["/etc/desanet/tls/portal.crt"])
    tls_key: AbsolutePath | None = Field(None, examples=["/etc/desanet/tls/portal.key"])
    https_port: Port = Field(443, examples=[443])
    # portalsec (Step 6): what one client, and all of them, may cost the portal.
    # Wrong voucher codes per minute across every client (rotating MACs multiplies
    # the per-client budget); a right code does not count.
    voucher_failures_per_minute: int = Field(30, ge=1, le=10000, examples=[30])
    # Open TCP connections one LAN address may hold to the portal ports (nftables ct count).
    max_connections_per_client: int = Field(64, ge=4, le=10000, examples=[64])
    # Open connections the portal serves at once (more are closed at accept), also
    # bounded by the daemon's file-handle limit minus a reserve for the control socket.
    max_connections: int = Field(4000, ge=16, le=100000, examples=[4000])
    # A request's headers must arrive within this time of the connection (or of the
    # previous answer); a body must keep arriving at >= 1 KiB per 10 s.
    header_timeout: Duration = Field(15, ge=1, le=300, examples=["15s"])
    # stale (Step 6): a logged-in client's request that its stale pre-login DNS answer
    # sent to the gateway is relayed to global addresses only; this also allows the
    # documentation prefixes (192.0.2/24, 198.51.100/24, 203.0.113/24): the lab's
    # "internet" lives there. Never needed in a real village.
    relay_test_networks: bool = Field(False, examples=[False])
    # office (Step 11): the terms button gives a free trial of this many minutes per
    # device (MAC) per local day, on trial_plan's rates (None: the default plan); 0 = off,
    # the terms button then gives session_length as before. docs/vouchers-office.md
    trial_minutes: int = Field(0, ge=0, le=24 * 60, examples=[15])
    trial_plan: str | None = Field(None, examples=["trial"])

    @property
    def https(self) -> bool:
        return self.tls_certificate is not None

    @model_validator(mode="after")
    def _tls_pair(self) -> Portal:
        if (self.tls_certificate is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_certificate"
            raise PydanticCustomError(
                "tls_pair",
                "portal.{missing} is missing: set both portal.tls_certificate and "
                "portal.tls_key (e.g. \"/etc/desanet/tls/portal.key\"), or neither",
                {"missing": missing},
            )
        if self.https and self.https_port in (self.http_port, self.redirect_port):
            raise PydanticCustomError(
                "ports_clash",
                "https_port {port} is also http_port or redirect_port; use e.g. 443",
                {"port": self.https_port},
            )
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Portal:
        if self.http_port == self.redirect_port:
            raise PydanticCustomError(
                "ports_clash",
                "http_port and redirect_port are both {port}; use two ports, e.g. 80 and 2050",
                {"port": self.http_port},
            )
        return self


# config: what a walled-garden prefix may never be. The garden is open to everyone
# before login, so a short prefix (0.0.0.0/0) or a special range opens the portal.
GARDEN_MIN_PREFIX = {4: 16, 6: 32}
GARDEN_NEVER: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = tuple(
    (why, ipaddress.ip_network(n)) for why, n in (
        ("\"this network\" (0.0.0.0/8)", "0.0.0.0/8"), ("loopback", "127.0.0.0/8"),
        ("link-local", "169.254.0.0/16"), ("multicast", "224.0.0.0/4"),
        ("reserved or broadcast", "240.0.0.0/4"), ("unspecified or loopback", "::/127"),
        ("IPv4-mapped", "::ffff:0:0/96"), ("link-local", "fe80::/10"),
        ("multicast", "ff00::/8")))
# Private and shared (CGNAT) ranges: only with walled_garden.allow_private_addresses.
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def _garden_prefix(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    shortest = GARDEN_MIN_PREFIX[net.version]
    if net.prefixlen < shortest:
        raise ValueError(
            f"{json_quote(str(net))} is too large for the walled garden (/{net.prefixlen}; at "
            f"most a /{shortest}): everyone reaches it before login; list the service's own "
            'addresses, e.g. "203.0.113.10/32"')
    for why, bad in GARDEN_NEVER:
        if net.version == bad.version and net.overlaps(bad):
            raise ValueError(f"{json_quote(str(net))} is {why}, not an internet service; "
                             'write e.g. "203.0.113.10/32"')
    return net


class WalledGarden(_Section):
    addresses: list[Annotated[IPNetwork, AfterValidator(_garden_prefix)]] = Field(
        default_factory=list, examples=[["203.0.113.10/32"]]
    )
    # A service on the ISP's private network (10.x, 172.16.x, 192.168.x, 100.64.x):
    # refused unless set, so a typo cannot open a private range to everyone.
    allow_private_addresses: bool = Field(False, examples=[False])
    # dns: exact names; "*.example.go.id" opens the subdomains of example.go.id (not itself)
    hostnames: list[GardenName] = Field(default_factory=list, examples=[["dukcapil.kemendagri.go.id"]])


class Access(_Section):
    trusted_macs: list[Mac] = Field(default_factory=list, examples=[["02:00:00:aa:bb:cc"]])
    blocked_macs: list[Mac] = Field(default_factory=list, examples=[["02:00:00:dd:ee:ff"]])

    @model_validator(mode="after")
    def _no_overlap(self) -> Access:
        both = sorted(set(self.trusted_macs) & set(self.blocked_macs))
        if both:
            raise PydanticCustomError(
                "mac_overlap",
                "{macs} listed as both trusted and blocked; keep each MAC in one list",
                {"macs": ", ".join(both)},
            )
        return self


PLAN_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"


class Plan(_Section):
    """A shaping plan. ``down``/``up`` are what the client is guaranteed when the
    uplink is busy (and its weight when sharing); ``ceil_*`` is the most it may
    take when others are idle (default: the whole uplink)."""

    down: Rate = Field(examples=["2mbit"])
    up: Rate = Field(examples=["512kbit"])
    ceil_down: OptionalRate = Field(None, examples=["10mbit"])
    ceil_up: OptionalRate = Field(None, examples=["2mbit"])
    priority: int = Field(4, ge=0, le=7, examples=[4])
    # sheet: what villagers read for this plan (site language); default from the plan's name.
    label_id: PlanLabel | None = Field(None, examples=["Paket Sekolah"])
    label_en: PlanLabel | None = Field(None, examples=["School plan"])
    # plans (Step 11): what the plan sells; semantics in gateway/config/plans.py and
    # docs/plans.md. None = no such limit.
    time_of_use: Duration | None = Field(None, examples=["1h"])  # online time, idle excluded
    validity: Duration | None = Field(None, examples=["1d"])  # wall clock from first use
    quota: Quota = Field(None, examples=["1GB"])  # down + up
    quota_down: Quota = Field(None, examples=["1GB"])
    quota_up: Quota = Field(None, examples=["200MB"])
    after_quota: Literal["cut", "slow"] = Field("cut", examples=["cut"])
    fair_use_down: OptionalRate = Field(None, examples=["256kbit"])  # after_quota = "slow"
    fair_use_up: OptionalRate = Field(None, examples=["128kbit"])
    # devices using one voucher at once; above 1 (or changed by an apply) it overrides each
    # voucher's own max_devices; at 1 vouchers keep theirs (docs/plans.md)
    shared_devices: SharedDevices = Field(1, examples=[2])
    price: Price = Field(0, examples=[5000])  # rupiah, stamped on each voucher created
    auto_login: bool = Field(False, examples=[False])  # a returning phone skips the portal

    def label(self, name: str, lang: str) -> str:
        """The human label of this plan (named ``name``) in ``lang``, falling back to the
        other language's label, then to one made from the name."""
        first, second = (self.label_en, self.label_id) if lang == "en" else \
            (self.label_id, self.label_en)
        return first or second or default_plan_label(name)

    @model_validator(mode="after")
    def _ceil_not_below_rate(self) -> Plan:
        for direction in ("down", "up"):
            ceil = getattr(self, f"ceil_{direction}")
            if ceil is not None and ceil < getattr(self, direction):
                raise PydanticCustomError(
                    "ceil_below_rate",
                    "ceil_{d} is below {d}; a client cannot be capped under its guaranteed rate "
                    "(write e.g. {d} = \"2mbit\", ceil_{d} = \"10mbit\")",
                    {"d": direction},
                )
        return self

    @model_validator(mode="after")
    def _limits_agree(self) -> Plan:
        check_limits(self)
        return self


class Shaping(_Section):
    enabled: bool = Field(False, examples=[True])
    uplink_down: Rate = Field(20_000_000, examples=["20mbit"])
    uplink_up: Rate = Field(5_000_000, examples=["5mbit"])
    # the default plan, for sessions without a named plan
    client_down: Rate = Field(2_000_000, examples=["2mbit"])
    client_up: Rate = Field(512_000, examples=["512kbit"])
    client_ceil_down: OptionalRate = Field(None, examples=["10mbit"])
    client_ceil_up: OptionalRate = Field(None, examples=["2mbit"])
    # not-logged-in clients (portal, walled garden) share one small class
    unauthorized_down: Rate = Field(1_000_000, examples=["1mbit"])
    unauthorized_up: Rate = Field(256_000, examples=["256kbit"])
    # the gateway's own traffic to the LAN (portal, local cache) is not charged to the uplink
    lan_rate: Rate = Field(1_000_000_000, examples=["1gbit"])
    plans: dict[Annotated[str, Field(pattern=PLAN_NAME)], Plan] = Field(
        default_factory=dict, examples=[{"school": {"down": "4mbit", "up": "1mbit"}}]
    )

    def plan(self, name: str | None) -> Plan:
        """The named plan, or the default plan built from client_* for None."""
        if name is not None and name in self.plans:
            return self.plans[name]
        # model_construct: the values are already parsed integers
        return Plan.model_construct(
            down=self.client_down, up=self.client_up, ceil_down=self.client_ceil_down,
            ceil_up=self.client_ceil_up, priority=4,
        )

    def plan_label(self, name: str, lang: str) -> str:
        """How people see plan ``name`` (one no longer configured: a label from its name)."""
        plan = self.plans.get(name)
        return plan.label(name, lang) if plan is not None else default_plan_label(name)

    @model_validator(mode="after")
    def _within_uplink(self) -> Shaping:
        named = [("default plan (client_*)", self.plan(None))]
        named += [(f"plan '{n}' (plans.{n})", p) for n, p in self.plans.items()]
        for label, plan in named:
            too_fast = [
                f"{field} {getattr(plan, field)}bit/s > {limit_name}"
                for field, limit_name, limit in (
                    ("down", "uplink_down", self.uplink_down),
                    ("ceil_down", "uplink_down", self.uplink_down),
                    ("up", "uplink_up", self.uplink_up),
                    ("ceil_up", "uplink_up", self.uplink_up),
                    ("fair_use_down", "uplink_down", self.uplink_down),
                    ("fair_use_up", "uplink_up", self.uplink_up),
                )
                if getattr(plan, field) is not None and getattr(plan, field) > limit
            ]
            if too_fast:
                raise PydanticCustomError(
                    "rate_above_uplink",
                    "{label} is faster than the uplink ({why}); lower it to at most the uplink",
                    {"label": label, "why": ", ".join(too_fast)},
                )
        if (self.client_ceil_down is not None and self.client_ceil_down < self.client_down) \
                or (self.client_ceil_up is not None and self.client_ceil_up < self.client_up):
            raise PydanticCustomError(
                "ceil_below_rate",
                "client_ceil_down/client_ceil_up must not be below client_down/client_up",
            )
        if self.unauthorized_down > self.uplink_down or self.unauthorized_up > self.uplink_up:
            raise PydanticCustomError(
                "rate_above_uplink",
                "unauthorized_down/unauthorized_up must not exceed the uplink; "
                "write e.g. unauthorized_down = \"1mbit\"",
            )
        return self


def _size(value: object) -> int:
    return parse_size(value)  # type: ignore[arg-type]


def _time_of_day(value: str) -> str:
    parse_time_of_day(value)
    return value


def _upstream(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"{json_quote(value)} is not an upstream base URL; "
            "write e.g. \"https://dukcapil.kemendagri.go.id\" (http or https, no query)"
        )
    return value.rstrip("/")


def _url_path(value: str) -> str:
    if not value.startswith("/") or "://" in value or any(c.isspace() for c in value):
        raise ValueError(f"{json_quote(value)} is not a path; write e.g. \"/informasi\"")
    return value


Size = Annotated[int, BeforeValidator(_size), within(MIN_SIZE, MAX_SIZE, format_size, '"500mb"')]
TimeOfDay = Annotated[str, AfterValidator(_time_of_day)]
UpstreamUrl = Annotated[str, AfterValidator(_upstream)]
UrlPath = Annotated[str, AfterValidator(_url_path)]


class GovService(_Section):
    """One government service in the local catalog (http://layanan.desa/<slug>/)."""

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", examples=["dukcapil"])
    title_id: str = Field(min_length=1, max_length=120, examples=["Data Kependudukan"])
    title_en: str = Field(min_length=1, max_length=120, examples=["Population records"])
    upstream: UpstreamUrl = Field(examples=["https://dukcapil.kemendagri.go.id"])
    # How long a stale copy may still be served while the upstream is unreachable.
    offline_for: Duration = Field(7 * 86400, examples=["7d"])
    prefetch: list[UrlPath] = Field(default_factory=list, examples=[["/", "/informasi"]])
    queue_posts: bool = Field(False, examples=[True])
    # offline: form pages to prefetch and keep besides those found by following the
    # prefetch pages' links (docs/local-services.md, "Prefetch").
    forms: list[UrlPath] = Field(default_factory=list, examples=[["/formulir"]])


class LocalServices(_Section):
    enabled: bool = Field(False, examples=[True])
    hostname: Hostname = Field("layanan.desa", examples=["layanan.desa"])
    cache_size: Annotated[Size, within(16 * 1024**2, 1024**4, format_size, '"2gb"')] = Field(
        2 * 1024**3, examples=["2gb"])
    prefetch_at: TimeOfDay = Field("02:30", examples=["02:30"])
    prefetch_rate: Rate = Field(1_000_000, examples=["1mbit"])
    request_timeout: Annotated[Duration, seconds_within(1, 300, '"15s"')] = Field(
        15, examples=["15s"])
    # offline: limits of the queue of forms kept while a service is unreachable.
    max_form_size: Annotated[Size, within(1024, 100 * 1024**2, format_size, '"1mb"')] = Field(
        1024**2, examples=["1mb"])
    queue_max_forms: int = Field(1000, ge=1, le=1_000_000, examples=[1000])
    queue_max_size: Annotated[Size, within(1024**2, 100 * 1024**3, format_size, '"64mb"')] = \
        Field(64 * 1024**2, examples=["64mb"])
    queue_per_client_hour: int = Field(30, ge=1, le=100_000, examples=[30])
    queue_min_free_disk: Size = Field(100 * 1024**2, examples=["100mb"])
    # proxy: upstream fetches one LAN address may have in flight at once (misses,
    # pass-through, forms); more wait for a free one, first come first served, up to
    # max_waiting_per_client; one more gets a 429 page (docs/local-services.md).
    max_misses_per_client: int = Field(6, ge=1, le=1000, examples=[6])
    max_waiting_per_client: int = Field(64, ge=0, le=10_000, examples=[64])
    services: list[GovService] = Field(default_factory=list)

    @model_validator(mode="after")
    def _form_fits_queue(self) -> LocalServices:
        if self.max_form_size > self.queue_max_size:
            raise PydanticCustomError(
                "form_above_queue",
                "max_form_size {form} is above queue_max_size {queue}: no form could ever be "
                'queued; write e.g. max_form_size = "1mb"',
                {"form": format_size(self.max_form_size), "queue": format_size(self.queue_max_size)})
        return self

    @model_validator(mode="after")
    def _unique_slugs(self) -> LocalServices:
        slugs = [s.slug for s in self.services]
        dupes = sorted({s for s in slugs if slugs.count(s) > 1})
        if dupes:
            raise PydanticCustomError(
                "duplicate_slug", "service slugs must be unique; repeated: {dupes}",
                {"dupes": ", ".join(dupes)},
            )
        return self


class Control(_Section):
    socket: str = Field("/run/desanet/control.sock", examples=["/run/desanet/control.sock"])


class Store(_Section):
    state_dir: str = Field("/var/lib/desanet", examples=["/var/lib/desanet"])
    run_dir: str = Field("/run/desanet", examples=["/run/desanet"])


class Programs(_Section):
    dnsmasq: str = Field("dnsmasq", examples=["/usr/sbin/dnsmasq"])


CROSS_FIELD = "cross_field"


def lan_problems(network: Network, dhcp: Dhcp, shaping: Shaping) -> list[str]:
    """Checks that span sections; each line starts with the field path."""
    problems = []
    net = network.lan_address.network
    gw = network.lan_address.ip
    for name in ("range_start", "range_end"):
        addr = getattr(dhcp, name)
        if addr not in net or addr in (net.network_address, net.broadcast_address, gw):
            problems.append(
                f"dhcp.{name} = {addr} is not a usable host of network.lan_address {net}; "
                f'write e.g. "{net.network_address + 100}"'
            )
    for i, server in enumerate(dhcp.upstream_dns):
        # dnsmasq asking itself (the gateway's LAN address) or no host loops or fails
        if server == gw or server.is_unspecified or server.is_multicast:
            problems.append(f"dhcp.upstream_dns[{i}] = {server} is not an outside resolver "
                            '(it is the gateway itself or no host); write e.g. "1.1.1.1"')
    if not problems and int(dhcp.range_start) > int(dhcp.range_end):
        problems.append("dhcp.range_start is after dhcp.range_end; swap them")
    if shaping.enabled and net.prefixlen < 17:
        problems.append(
            f"network.lan_address {net} is larger than /17; with shaping enabled each client "
            'gets a tc class numbered from its address, so use e.g. "10.42.0.1/20"'
        )
    if network.lan_interface == network.wan_interface:
        problems.append(
            f"network.wan_interface {network.wan_interface!r} is also network.lan_interface; "
            "the LAN and the uplink need two interfaces"
        )
    return problems


def garden_problems(network: Network, garden: WalledGarden) -> list[str]:
    """Walled-garden prefixes against the LAN: never overlapping it (the garden would
    open client-to-client and gateway traffic), private only when allowed explicitly."""
    problems = []
    lan = network.lan_address.network
    for i, net in enumerate(garden.addresses):
        path = f"walled_garden.addresses[{i}] = {json_quote(str(net))}"
        if net.version == 4 and net.overlaps(lan):
            problems.append(f"{path} overlaps the LAN (network.lan_address {lan}); the garden "
                            'is for internet services, e.g. "203.0.113.10/32"')
        elif not garden.allow_private_addresses and any(
                net.version == r.version and net.overlaps(r)
                for r in PRIVATE_RANGES):
            problems.append(f"{path} is a private or shared range; set "
                            "walled_garden.allow_private_addresses = true if a service really "
                            'lives there, or list its public address, e.g. "203.0.113.10/32"')
    return problems


# uplink (Step 5): how the gateway decides that the village uplink is down.
def _ip_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{json_quote(value)} is not an address and port; write e.g. "
                         "\"1.1.1.1:443\" (an IP address: probes must not depend on DNS)")
    return value


IpPort = Annotated[str, AfterValidator(_ip_port)]


class Uplink(_Section):
    """Probes of the uplink: a round every ``probe_interval``; down after ``fail_after``
    failed rounds in a row, up again after ``recover_after`` good ones. DNS probes go
    to ``probe_dns`` (default: dhcp.upstream_dns, else the gateway's own resolvers)."""

    probe_interval: Duration = Field(2, le=60, examples=["2s"])
    fail_after: int = Field(3, ge=1, le=20, examples=[3])
    recover_after: int = Field(2, ge=1, le=20, examples=[2])
    probe_dns: list[IPAddress] = Field(default_factory=list, examples=[["1.1.1.1"]])
    probe_tcp: list[IpPort] = Field(default_factory=list, examples=[["1.1.1.1:443"]])


class Config(_Section):
    site: Site
    network: Network
    dhcp: Dhcp
    portal: Portal = Portal()
    walled_garden: WalledGarden = WalledGarden()
    access: Access = Access()
    shaping: Shaping = Shaping()
    control: Control = Control()
    store: Store = Store()
    programs: Programs = Programs()
    local_services: LocalServices = LocalServices()
    uplink: Uplink = Uplink()
    telemetry: Telemetry = Telemetry()  # MQTT to the region's broker (config/telemetry.py)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems = lan_problems(self.network, self.dhcp, self.shaping)
        problems += wan_problems(self.network)
        problems += garden_problems(self.network, self.walled_garden)
        trial = self.portal.trial_plan
        if trial is not None and trial not in self.shaping.plans:  # office
            problems.append(f"portal.trial_plan: {trial!r} is not a plan in shaping.plans "
                            f"(known: {', '.join(self.shaping.plans) or 'none'}); write one of "
                            "them, or leave it out for the default plan")
        if problems:
            # One error carrying every problem; the loader splits it into lines.
            raise PydanticCustomError(CROSS_FIELD, "\n".join(problems))
        return self

    @property
    def lan_ip(self) -> str:
        return str(self.network.lan_address.ip)

    @property
    def portal_url(self) -> str:
        port = "" if self.portal.http_port == 80 else f":{self.portal.http_port}"
        return f"http://{self.portal.hostname}{port}/"

    @property
    def portal_https_url(self) -> str | None:
        """The portal over HTTPS, when a certificate is configured (portal.tls_*)."""
        if not self.portal.https:
            return None
        port = "" if self.portal.https_port == 443 else f":{self.portal.https_port}"
        return f"https://{self.portal.hostname}{port}/"
