"""The intake: turns monitors' native alerts into the engine's input events (design §7b).

Layout: `channels/` parses each sender's payload into `Signal`s (one module per channel:
Alertmanager, Grafana, PagerDuty Events v2; email and phone come later), `tracking.py` decides
the input events from a signal and what is known of its alert key, `store.py` keeps that
knowledge in PostgreSQL, `publish.py` builds the CloudEvents and waits for Kafka's
acknowledgement, `http.py` serves it all.
"""
