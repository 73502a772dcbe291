"""Fleet rollouts: one model version over many units, in waves, from one controller.

The controller is ``edge-agent fleet`` run by an operator (or a CI job), not the
daemon: it talks only to the broker. It learns the fleet from the units'
retained status and OTA state, commands one unit at a time on its OTA topic,
judges each wave by the outcomes the units report (their own validation and
live canary verdict), and keeps the rollout record on disk and retained on the
broker (docs/FLEET.md).

Modules:
  inventory.py   every unit as the broker shows it (status, labels, versions, OTA state)
  plan.py        waves, thresholds, durations, label selectors: the arguments' meaning
  record.py      the rollout record, its atomic persistence and the lease
  bus.py         the controller's broker connection (subscriptions, commands, the retained record)
  controller.py  the rollout loop: waves, outcomes, halt, rollback, pause/resume/abort
  view.py        progress lines, the summary, the unit table
  cli.py         ``edge-agent fleet units|rollout|status|pause|resume|abort``
"""
