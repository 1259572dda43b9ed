#!/usr/bin/python3
"""A session client with no llamad code: plain D-Bus through jeepney. Opens a session,
sends each user message as a turn (the session keeps the conversation and its KV cache),
prints each answer as a JSON line, then closes the session.

    session_chat.py BUS_ADDRESS MODEL MAX_TOKENS MESSAGE...
"""
import json
import sys

from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import Proxy, open_dbus_connection

address, model, max_tokens, users = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
conn = open_dbus_connection(bus=address)
# Only the daemon's own signals: any client may send a signal with the manager's path and
# interface to us, so the rule names the unique name that owns org.llamad.Llama1 now (the
# bus and jeepney's filter both match on it).
(daemon,) = Proxy(message_bus, conn).GetNameOwner("org.llamad.Llama1")
rule = MatchRule(type="signal", sender=daemon, interface="org.llamad.Llama1.Manager", path="/org/llamad/Llama1")
Proxy(message_bus, conn).AddMatch(rule)
manager = DBusAddress("/org/llamad/Llama1", bus_name="org.llamad.Llama1", interface="org.llamad.Llama1.Manager")


def call(address, method, signature, args):
    reply = conn.send_and_get_reply(new_method_call(address, method, signature, args))
    if reply.header.fields.get(HeaderFields.error_name):
        print(json.dumps({"error": reply.header.fields[HeaderFields.error_name], "message": reply.body[0]}))
        sys.exit(1)
    return reply.body


(path,) = call(manager, "OpenSession", "sa{sv}", (model, {}))
session = DBusAddress(path, bus_name="org.llamad.Llama1", interface="org.llamad.Llama1.Session")
options = {"max_tokens": ("u", max_tokens), "temperature": ("d", 0.0)}
with conn.filter(rule, bufsize=100000) as signals:
    for user in users:
        message = {"role": ("s", "user"), "content": ("s", user)}
        (request,) = call(session, "Chat", "aa{sv}a{sv}", ([message], options))
        text = ""
        while True:
            msg = conn.recv_until_filtered(signals)
            if msg.body[0] != request:
                continue
            if msg.header.fields[HeaderFields.member] == "Token":
                text += msg.body[1]
            elif msg.header.fields[HeaderFields.member] == "Finished":
                stats = {k: v[1] for k, v in msg.body[1].items()}
                print(json.dumps({"text": text, "prompt_tokens": stats.get("prompt_tokens"),
                                  "cached_prompt_tokens": stats.get("cached_prompt_tokens")}), flush=True)
                break
call(session, "Close", "", ())
