"""The checker: the real-server probes in a process of their own, so that no probe ever
delays a heartbeat. `process.py` is the checker's side, `client.py` the agent's, and
`channel.py` the messages between them."""
