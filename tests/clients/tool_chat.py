#!/usr/bin/python3
"""A tool-calling client with no llamad code: plain D-Bus through jeepney. Asks
QUESTION offering TOOLS_JSON (a JSON array of OpenAI-style functions) through
Manager.ChatMessages; each ToolCall signal is "run" by answering RESULT, sent back
as a `tool` message with the call's id, and the model answers again. Prints one
JSON line per request: the calls, the text and the finish reason.

    tool_chat.py BUS_ADDRESS MODEL TOOLS_JSON TOOL_CHOICE QUESTION RESULT
"""
import json
import sys

from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import Proxy, open_dbus_connection

address, model, tools, choice, question, result = sys.argv[1:7]
conn = open_dbus_connection(bus=address)
# Only the daemon's own signals: any client may send a signal with the manager's path and
# interface to us, so the rule names the unique name that owns org.llamad.Llama1 now (the
# bus and jeepney's filter both match on it).
(daemon,) = Proxy(message_bus, conn).GetNameOwner("org.llamad.Llama1")
rule = MatchRule(type="signal", sender=daemon, interface="org.llamad.Llama1.Manager", path="/org/llamad/Llama1")
Proxy(message_bus, conn).AddMatch(rule)
manager = DBusAddress("/org/llamad/Llama1", bus_name="org.llamad.Llama1", interface="org.llamad.Llama1.Manager")


def ask(messages, options, signals):
    reply = conn.send_and_get_reply(new_method_call(manager, "ChatMessages", "saa{sv}a{sv}", (model, messages, options)))
    if reply.header.fields.get(HeaderFields.error_name):
        print(json.dumps({"error": reply.header.fields[HeaderFields.error_name], "message": reply.body[0]}))
        sys.exit(1)
    (request,) = reply.body
    text, calls = "", []
    while True:
        msg = conn.recv_until_filtered(signals)
        if msg.body[0] != request:
            continue
        member = msg.header.fields[HeaderFields.member]
        if member == "Token":
            text += msg.body[1]
        elif member == "ToolCall":
            _, call_id, name, arguments = msg.body
            calls.append({"id": call_id, "name": name, "arguments": json.loads(arguments)})
        elif member == "Finished":
            finish = msg.body[1]["finish_reason"][1]
            print(json.dumps({"calls": calls, "text": text, "finish_reason": finish}), flush=True)
            return text, calls


def s(v):
    return ("s", v)


base = {"max_tokens": ("u", 64), "temperature": ("d", 0.0), "tools": s(tools)}
messages = [{"role": s("user"), "content": s(question)}]
with conn.filter(rule, bufsize=100000) as signals:
    text, calls = ask(messages, {**base, "tool_choice": s(choice)}, signals)
    if calls:
        wire_calls = [{"id": s(c["id"]), "name": s(c["name"]), "arguments": s(json.dumps(c["arguments"]))} for c in calls]
        messages.append({"role": s("assistant"), "content": s(text), "tool_calls": ("aa{sv}", wire_calls)})
        for c in calls:
            messages.append({"role": s("tool"), "content": s(result), "tool_call_id": s(c["id"]), "name": s(c["name"])})
        ask(messages, base, signals)
