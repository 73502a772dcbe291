"""The daemon's front doors: HTTP and MQTT adapters over serving's InferenceService.

What lives here:
  http.py         KServe v2 over HTTP on the Unix socket (and optional TCP):
                  listeners, and the answer to each route
  http_routes.py  the HTTP routes, parsed once into a Route
  httpserver/     the HTTP/1.1 server itself (its __init__ says what lives there)
  authority.py    who may change the daemon's state over HTTP (control endpoints)
  mqtt/           the MQTT transport, its client and companion offload (its
                  __init__ says what lives there)
"""
