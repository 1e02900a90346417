#!/usr/bin/env python3
"""Writes the small seed corpora kept in the repository (fuzz/corpus/<target>/).

Run from anywhere: `python3 fuzz/seeds.py`. Each seed is a valid or nearly valid input
that shows the fuzzer the shape of its target's input; libFuzzer finds the rest.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def length(n):
    if n < 0x80:
        return bytes([n])
    if n < 0x4000:
        return (n | 0x8000).to_bytes(2, "big")
    if n < 0x200000:
        return (n | 0xC00000).to_bytes(3, "big")
    if n < 0x10000000:
        return (n | 0xE0000000).to_bytes(4, "big")
    return b"\xf0" + n.to_bytes(4, "big")


def sentence(*words):
    out = b""
    for w in words:
        w = w.encode() if isinstance(w, str) else w
        out += length(len(w)) + w
    return out + b"\x00"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# The wire format.
write("routeros_codec", "login", b"\x07" + sentence("/login", "=name=admin", "=password=x"))
write("routeros_codec", "two", b"\x01" + sentence("!re", "=name=a", ".tag=1") + sentence("!done", ".tag=1"))
write("routeros_codec", "long_word", b"\x20" + sentence("x" * 200, "y" * 20000))
write("routeros_codec", "control", b"\x03" + sentence("!re") + b"\xf8")
write("routeros_codec", "truncated", b"\x05" + sentence("!done")[:-3])

# Replies as the router sends them.
replies = [
    ("users", sentence("!re", "=.id=*1", "=name=admin", "=group=full", "=address=10.0.0.0/8,192.0.2.1",
                       "=disabled=false", "=last-logged-in=2026-11-22 10:00:00", ".tag=2")
     + sentence("!done", ".tag=2")),
    ("clock7", sentence("!re", "=time=13:05:09", "=date=2026-11-22", "=time-zone-name=UTC")),
    ("clock6", sentence("!re", "=time=13:05:09", "=date=nov/22/2026")),
    ("clock_far", sentence("!re", "=time=23:59:59", "=date=+262142-12-31")),
    ("trap", sentence("!trap", "=category=1", "=message=failure: already have such name", ".tag=3")
     + sentence("!done", ".tag=3")),
    ("fatal", sentence("!fatal", "not logged in")),
    ("empty", sentence("!empty", ".tag=4") + sentence("!done", ".tag=4")),
    ("resource", sentence("!re", "=uptime=1w2d", "=version=7.18.2", "=cpu-load=3", "=free-memory=1000",
                          "=total-memory=2000", "=board-name=CHR")),
    ("sched", sentence("!re", "=.id=*9", "=name=postern-access-x", "=start-date=2026-11-22",
                       "=start-time=13:05:11", "=run-count=0", "=policy=read,write", "=disabled=no")),
    ("device_mode", sentence("!re", "=mode=advanced", "=scheduler=yes", "=fetch=no")),
    ("nat", sentence("!re", "=.id=*3", "=chain=dstnat", "=action=dst-nat", "=protocol=tcp",
                     "=dst-port=20001", "=to-addresses=192.168.88.20", "=to-ports=443", "=comment=x")),
]
for name, data in replies:
    write("routeros_reply", name, data)

# A whole conversation, as the client's peer: login answer, then replies to tags 1-3.
login = sentence("!done")
write("routeros_client", "conversation", login
      + sentence("!re", "=name=r1", ".tag=1") + sentence("!done", ".tag=1")
      + sentence("!re", "=.id=*1", "=name=admin", "=group=full", ".tag=2") + sentence("!done", ".tag=2")
      + sentence("!re", "=time=13:05:09", "=date=2026-11-22", ".tag=3") + sentence("!done", ".tag=3"))
write("routeros_client", "challenge", sentence("!done", "=ret=0123456789abcdef0123456789abcdef") + sentence("!done"))
write("routeros_client", "refused", sentence("!trap", "=message=invalid user name or password (6)"))
write("routeros_client", "traps", login + sentence("!trap", "=category=2", "=message=interrupted", ".tag=2")
      + sentence("!done", ".tag=2") + sentence("!fatal", "session terminated on request"))
write("routeros_client", "silent", login)

# Commands as a client sends them to the sim (first byte: 1 = logged in as admin, 2 = RouterOS 6).
cmds = [
    ("print", b"\x01" + sentence("/user/print", "?name=admin", ".tag=1")),
    ("add_user", b"\x01" + sentence("/user/add", "=name=postern-a1", "=group=full", "=password=pw-123",
                                    "=address=127.0.0.1/32", "=comment=postern:access:x", ".tag=2")
     + sentence("/user/print", "=.proplist=name,group", "?#|", ".tag=3")),
    ("nat", b"\x01" + sentence("/ip/firewall/nat/add", "=chain=dstnat", "=action=dst-nat", "=protocol=tcp",
                               "=dst-port=20001", "=to-addresses=192.168.88.20", "=to-ports=443", ".tag=4")),
    ("scheduler", b"\x01" + sentence("/system/scheduler/add", "=name=e", "=start-date=2026-11-22",
                                     "=start-time=13:05:11", "=on-event=/user remove [find comment=\"x\"]", ".tag=5")),
    ("cancel", b"\x01" + sentence("/user/active/listen", ".tag=6") + sentence("/cancel", "=tag=6", ".tag=7")),
    ("challenge_v6", b"\x02" + sentence("/login", ".tag=1") + sentence("/login", "=name=admin",
                                                                      "=response=00" + "0" * 32)),
    ("not_logged_in", b"\x00" + sentence("/system/resource/print", ".tag=9")),
    ("quit", b"\x01" + sentence("/system/identity/print") + sentence("/quit")),
    ("clock", b"\x01" + sentence("/system/clock/print", ".tag=1") + sentence("/system/device-mode/print", ".tag=2")),
]
for name, data in cmds:
    write("sim_api", name, data)

# Console lines and scripts.
write("sim_console", "console", "/user print\n/user add name=bob group=read password=x\n"
      "/user set [find name=bob] disabled=yes\n/ip firewall nat print detail\n"
      "/system scheduler print\n/user remove bob\nquit\n")
write("sim_console", "script", ":do { /user active request-logout [find name=\"postern-a1\"] } on-error={}\n"
      "/user remove [find comment=\"postern:access:x\"]\n/system scheduler remove [find name=\"e\"]\n")
write("sim_console", "formats", "1w2d3h4m5s\n00:05:00\n1d00:00:00\n2026-11-22\nnov/22/2026\n13:05:09\n"
      "local,ssh,!write\n*1F\n10.0.0.0/8,192.0.2.1,2001:db8::/32\n?name=admin ?#|\n")

# Terminal control messages.
for name, text in [
    ("resize", '{"type":"resize","cols":80,"rows":24}'),
    ("unknown", '{"type":"exec","command":"reboot"}'),
    ("big", '{"type":"resize","cols":4294967296,"rows":2}'),
    ("utf8", '{"type":"r\u00e9size\u00e9\u00e9\u00e9","cols":80,"rows":24}'),
]:
    write("terminal_control", name, text)

# Recordings: two cap bytes, then operations (see the target).
write("asciicast", "output", b"\x00\x10" + b"\x51hello" + b"\x22\xc3\xa9" + b"\xf3\x4e\x16" + b"\x19\xe2")
write("asciicast", "split", b"\xff\x00" + b"\x11\xe2" + b"\x21\x82\xac" + b"\x38" + b"\x8fabcdefgh")

# Config files, then a NUL and environment lines.
write("config", "full", 'data_dir = "/var/lib/postern"\nlisten = "127.0.0.1:9000"\nlab_mode = false\n'
      'grant_min = "10m"\ngrant_max = "1d"\ngrant_default = "2h"\nlog_format = "json"\n'
      'trusted_proxies = ["10.0.0.1"]\n[[regions]]\nname = "eu"\nentry_point = "eu.example.net"\n'
      'port_min = 40000\nport_max = 40100\ntunnel_source = "100.64.0.1"\n'
      '\x00LISTEN=127.0.0.1:9001\nGRANT_MIN=5m\nTRUSTED_PROXIES=10.0.0.2, 10.0.0.3\n')
write("config", "bad", 'listne = "x"\n\x00LAB_MODE=maybe\n')
write("config", "duration", "90s")

# Operator input.
for name, text in [
    ("allow", "203.0.113.0/24"), ("allow6", "2001:db8::/48"), ("private", "192.168.1.10"),
    ("dst", "192.168.88.20"), ("name", " Branch 01 "), ("user", "alice.smith"),
    ("entry", "gw.example.net"), ("id", "3f8a3c1e-2b4d-4c6e-8f10-123456789abc"), ("status", "active"),
]:
    write("domain_rules", name, text)

# Control-channel frames: a chunk-size byte, then frames (u32 big-endian length + JSON).
def frame(text):
    text = text.encode()
    return len(text).to_bytes(4, "big") + text


write("control_frame", "down", b"\x07" + frame('{"type":"hello","protocol":1,"server":"s1"}')
      + frame('{"type":"close","key":"access:3f8a3c1e-2b4d-4c6e-8f10-123456789abc","reason":"revoked"}')
      + frame('{"type":"ack","seq":42}') + frame('{"type":"synced"}'))
write("control_frame", "open", b"\x40" + frame(
    '{"type":"open","key":"forward:3f8a3c1e-2b4d-4c6e-8f10-123456789abc",'
    '"region":"0b6f5a52-64c4-4b0e-9a53-0e4b7c3a1d2f","port":40001,'
    '"target":{"via":"tunnel","address":"100.64.0.7","port":8291},'
    '"sources":{"allow":["203.0.113.0/24"],"allow_rfc1918":true},'
    '"expires_at":"2026-12-07T03:00:00Z"}'))
write("control_frame", "up", b"\x03" + frame(
    '{"type":"event","seq":7,"event":{"kind":"connection_opened",'
    '"key":"access:3f8a3c1e-2b4d-4c6e-8f10-123456789abc","id":1,'
    '"source":"203.0.113.9:51000","at":"2026-12-07T03:00:00Z","first":true}}')
      + frame('{"type":"refused","error":"not a message"}'))
write("control_frame", "junk_then_good", b"\x01" + frame('{"type":1') + frame('{"type":"synced"}'))
write("control_frame", "too_long", b"\x02" + b"\xff\xff\xff\xff{")
