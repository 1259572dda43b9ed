#!/usr/bin/python3
"""A llamad client with no llamad code: plain D-Bus through jeepney (Debian's
python3-jeepney). Streams one completion and prints it as JSON.

    stream_completion.py BUS_ADDRESS MODEL PROMPT SEED MAX_TOKENS [PRIORITY]
"""
import json
import sys

from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import Proxy, open_dbus_connection

address, model, prompt, seed, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
conn = open_dbus_connection(bus=address)
# Only the daemon's own signals: any client may send a signal with the manager's path and
# interface to us, so the rule names the unique name that owns org.llamad.Llama1 now (the
# bus and jeepney's filter both match on it).
(daemon,) = Proxy(message_bus, conn).GetNameOwner("org.llamad.Llama1")
rule = MatchRule(type="signal", sender=daemon, interface="org.llamad.Llama1.Manager", path="/org/llamad/Llama1")
Proxy(message_bus, conn).AddMatch(rule)
manager = DBusAddress("/org/llamad/Llama1", bus_name="org.llamad.Llama1", interface="org.llamad.Llama1.Manager")
options = {"seed": ("t", seed), "max_tokens": ("u", max_tokens), "temperature": ("d", 0.8)}
if len(sys.argv) > 6:
    options["priority"] = ("s", sys.argv[6])
with conn.filter(rule, bufsize=100000) as signals:
    reply = conn.send_and_get_reply(new_method_call(manager, "Generate", "ssa{sv}", (model, prompt, options)))
    if reply.header.fields.get(HeaderFields.error_name):
        print(json.dumps({"error": reply.header.fields[HeaderFields.error_name], "message": reply.body[0]}))
        sys.exit(1)
    request = reply.body[0]
    text = ""
    while True:
        msg = conn.recv_until_filtered(signals)
        member = msg.header.fields[HeaderFields.member]
        if msg.body[0] != request:
            continue
        if member == "Token":
            text += msg.body[1]
        elif member == "Finished":
            stats = {k: v[1] for k, v in msg.body[1].items()}
            print(json.dumps({"request": request, "text": text, "finish_reason": stats["finish_reason"],
                              "generated_tokens": stats.get("generated_tokens")}))
            break
