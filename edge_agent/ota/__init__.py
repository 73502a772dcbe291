"""Over-the-air model updates: pull, verify, validate, canary, promote or roll back.

- ``statemachine.py``: the update's states and transitions, persisted before each state's work.
- ``updater.py``: drives one model's update through them (blocking): the decisions, the events,
  the intents. ``install.py`` does the blocking work of its first states (download into staging,
  verify, validate); ``registry.py`` fetches and checks what the registry serves, ``download.py``
  moves the bytes, ``validate.py`` and ``golden.py`` decide whether a version is fit;
  ``versions.py`` owns the on-disk layout and pointers.
- ``intents.py``: what an update needs the serving side to do; ``agent.py`` carries it out in the
  daemon, one task and one worker thread (``worker.py``) per model; ``commands.py`` checks commands.
- ``routing.py``: the one rule saying which versions may be routed (the repository's admit hook).
- ``canary.py``: the live-traffic verdict. ``manifest.py``, ``signing.py``, ``publish.py``,
  ``cli.py``, ``devserver.py``: the registry side (publishing, keys, a dev server).
- ``errors.py``: the update path's errors, each with a stable code; ``metrics.py``: its metrics.
"""
