"""Alerts: email, pager and notify scripts for what an operator must hear about.

`policy.py` decides (sans I/O); `spool.py` keeps what is owed on disk; `email.py`,
`pager.py` and `scripts.py` are the thin senders; `alerter.py` wires them for the agent.
"""

from hapair.alerts.alerter import Alerter
from hapair.alerts.policy import Alert, AlertPolicy, Backoff

__all__ = ["Alert", "AlertPolicy", "Alerter", "Backoff"]
