"""The daemon's front doors: HTTP and MQTT adapters over serving's InferenceService.

What lives here:
  http.py                 KServe v2 over HTTP on the Unix socket (and optional TCP):
                          listeners, and the answer to each route
  http_routes.py          the HTTP routes, parsed once into a Route
  httpserver/             the HTTP/1.1 server itself (its __init__ says what lives there)
  authority.py            who may change the daemon's state over HTTP (control endpoints)
  mqtt.py                 the MQTT transport: requests, answers, state and telemetry topics
  mqtt_bridge.py          paho-mqtt driven by the asyncio loop, with our reconnect policy
  mqtt_client.py          a small asyncio MQTT inference client (CLI, tests, bench)
  mqtt_publish_decode.py  a faster MQTT 5 PUBLISH decoder for paho-mqtt 2.x
  offload.py              the edge side of companion offload over MQTT
  outbox.py               the on-disk queue of MQTT messages while the broker is away
  ratelimit.py            per-client token buckets under a total bucket
  reply_topics.py         where an MQTT answer may be published: the one rule for reply topics
"""
