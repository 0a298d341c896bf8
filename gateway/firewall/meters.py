"""nftables text for byte counting and quotas per voucher (pure; docs/quota.md).

Objects, per voucher (named after it, see :mod:`gateway.meter`): two counters
(``cd_``/``cu_``: bytes down and up, over all its devices) and one quota object per
limit of its plan (``qt_`` total, ``qd_`` down, ``qu_`` up), written ``over N bytes
used M bytes`` so a quota made again starts from the bytes already used.

Maps from a client's address to its voucher's objects, looked up once per packet
(a hash look-up, never a walk of rules, whatever the number of clients):

* ``acct_down4`` / ``acct_up4``  address -> counter
* ``quota_total4`` / ``quota_down4`` / ``quota_up4``  address -> quota
* ``over4``        address -> what happens past a quota: ``drop`` (cut) or
                   ``jump fair_use`` (slow)
* ``fair_class4``  address -> the client's fair-use HTB class (``meta priority``)

An authorized client's upload leaves ``lan_forward`` through ``client_up``, every
download to the LAN passes ``client_down`` before ``ct state established`` accepts
it. Each runs the quota objects first (an "over" quota matches once used >= limit:
its packet, the one that reaches the limit, already takes the over verdict), then
the counter: a dropped packet is not counted as delivered.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from gateway.meter import QUOTA_KINDS, Meter, counter_names, quota_name

FAMILY, TABLE = "inet", "desanet"
QUOTA_MAP = {"total": "quota_total4", "down": "quota_down4", "up": "quota_up4"}
METER_MAPS = ("acct_down4", "acct_up4", *QUOTA_MAP.values(), "over4", "fair_class4")


def meter_sets(meters: Iterable[Meter], carried: Mapping[str, tuple[int, int]]) -> str:
    """Declarations of the objects and maps for a full ruleset.

    ``carried``: object name -> (packets, bytes) of counters, (0, used) of quotas, as the
    live table held them: counters keep their unread bytes and quotas their use across
    a rebuild. A quota not carried (no live table: after a reboot) starts at the bytes
    the store holds. Counters carried for vouchers no longer online are kept too (their
    bytes are read at the next tick, then the objects go).
    """
    objects: dict[str, str] = {}
    elems: dict[str, list[str]] = {name: [] for name in METER_MAPS}
    for name, (packets, count) in carried.items():
        if name.startswith(("cd_", "cu_")):
            objects[name] = f"  counter {name} {{ packets {packets} bytes {count}; }}\n"
    for m in meters:
        down, up = counter_names(m.voucher)
        for name in (down, up):
            packets, count = carried.get(name, (0, 0))
            objects[name] = f"  counter {name} {{ packets {packets} bytes {count}; }}\n"
        elems["acct_down4"].append(f'{m.ip} : "{down}"')
        elems["acct_up4"].append(f'{m.ip} : "{up}"')
        for kind in QUOTA_KINDS:
            limit = m.limits.get(kind)
            if limit is None:
                continue
            name = quota_name(kind, m.voucher)
            used = carried[name][1] if name in carried else m.used(kind)
            objects[name] = f"  quota {name} {{ over {limit} bytes used {used} bytes; }}\n"
            elems[QUOTA_MAP[kind]].append(f'{m.ip} : "{name}"')
        if m.over_verdict is not None:
            elems["over4"].append(f"{m.ip} : {m.over_verdict}")
        if m.fair_class is not None:
            elems["fair_class4"].append(f"{m.ip} : {m.fair_class}")
    kinds = {"acct_down4": "counter", "acct_up4": "counter", "over4": "verdict",
             "fair_class4": "classid", **{v: "quota" for v in QUOTA_MAP.values()}}
    maps = ""
    for name in METER_MAPS:
        body = ", ".join(elems[name])
        items = f" elements = {{ {body} }};" if body else ""
        maps += f"  map {name} {{ type ipv4_addr : {kinds[name]};{items} }}\n"
    return "".join(objects[k] for k in sorted(objects)) + maps


def meter_chains(lan: str, shaping: bool) -> str:
    """The chains that run the maps (``lan``: the quoted LAN interface). Without shaping
    there are no classes to slow down into, and no ``fair_use`` chain."""
    fair = f"""  chain fair_use {{
    iifname {lan} meta priority set ip saddr map @fair_class4
    oifname {lan} meta priority set ip daddr map @fair_class4
  }}
""" if shaping else ""
    return f"""  chain client_up {{
    quota name ip saddr map @quota_total4 ip saddr vmap @over4
    quota name ip saddr map @quota_up4 ip saddr vmap @over4
    counter name ip saddr map @acct_up4
    accept
  }}
  chain client_down {{
    quota name ip daddr map @quota_total4 ip daddr vmap @over4
    quota name ip daddr map @quota_down4 ip daddr vmap @over4
    counter name ip daddr map @acct_down4
  }}
{fair}"""


def _replace(name: str, key: str, value: str) -> list[str]:
    # add-delete-add: a changed value replaces the element atomically (nft 1.0.6 has no
    # "replace element"; adding over a different value fails)
    add = f"add element {FAMILY} {TABLE} {name} {{ {key} : {value} }}"
    return [add, f"delete element {FAMILY} {TABLE} {name} {{ {key} }}", add]


def plan_meter(meter: Meter, held: Collection[str] = ()) -> list[str]:
    """Commands that meter one client (part of its authorize transaction; O(1)).

    Objects are added only when missing: ``add`` keeps an existing counter's bytes and
    an existing quota's use (a second device of the voucher, a re-authorize), while a
    new limit (a plan changed) takes effect at once. Map elements are replaced with
    add-delete-add, which fails when the address holds another value (another voucher's
    objects: a session replaced by one with another voucher); the adapter then looks up
    which maps hold the address (``held``) and those are deleted first. Maps the meter
    does not use lose the address too (a plan without a quota after one with it).
    """
    down, up = counter_names(meter.voucher)
    lines = [f"add counter {FAMILY} {TABLE} {down}", f"add counter {FAMILY} {TABLE} {up}"]
    wanted: dict[str, str] = {"acct_down4": f'"{down}"', "acct_up4": f'"{up}"'}
    for kind in QUOTA_KINDS:
        limit = meter.limits.get(kind)
        if limit is None:
            continue
        name = quota_name(kind, meter.voucher)
        lines.append(f"add quota {FAMILY} {TABLE} {name} "
                     f"{{ over {limit} bytes used {meter.used(kind)} bytes; }}")
        wanted[QUOTA_MAP[kind]] = f'"{name}"'
    if meter.over_verdict is not None:
        wanted["over4"] = meter.over_verdict
    if meter.fair_class is not None:
        wanted["fair_class4"] = meter.fair_class
    for name in METER_MAPS:
        if name in held:
            lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {meter.ip} }}")
            if name in wanted:
                lines.append(f"add element {FAMILY} {TABLE} {name} "
                             f"{{ {meter.ip} : {wanted[name]} }}")
        elif name in wanted:
            lines += _replace(name, meter.ip, wanted[name])
    return lines


def plan_unmeter(meter: Meter) -> list[str]:
    """Commands that stop metering one client; idempotent (add, then delete).

    The voucher's objects stay: their unread bytes are read at the next tick, which then
    removes the objects no client refers to (:func:`plan_drop_objects`).
    """
    down, up = counter_names(meter.voucher)
    pairs = [("acct_down4", f'"{down}"'), ("acct_up4", f'"{up}"')]
    for kind in QUOTA_KINDS:
        if kind in meter.limits:
            pairs.append((QUOTA_MAP[kind], f'"{quota_name(kind, meter.voucher)}"'))
    if meter.over_verdict is not None:
        pairs.append(("over4", meter.over_verdict))
    if meter.fair_class is not None:
        pairs.append(("fair_class4", meter.fair_class))
    lines = []
    for name, value in pairs:
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {meter.ip} : {value} }}")
        lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {meter.ip} }}")
    return lines


def plan_unheld(ip: str, held: Iterable[str]) -> str:
    """Delete the address from the meter maps that hold it (looked up just before)."""
    return "".join(f"delete element {FAMILY} {TABLE} {name} {{ {ip} }}\n" for name in held)


def plan_drop_objects(names: Iterable[str]) -> str:
    """Delete meter objects (no map element may refer to them any more)."""
    lines = []
    for name in sorted(names):
        kind = "counter" if name.startswith(("cd_", "cu_")) else "quota"
        lines.append(f"delete {kind} {FAMILY} {TABLE} {name}")
    return "\n".join(lines) + "\n" if lines else ""
