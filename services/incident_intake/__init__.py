"""The intake: turns monitors' and people's native input into the engine's input events (design §7b).

Layout: `channels/` parses each sender's payload into `Signal`s (one module per channel:
Alertmanager, Grafana, PagerDuty Events v2), `tracking.py` decides the input events from a signal
and what is known of its alert key, `store.py` keeps that knowledge in PostgreSQL, `publish.py`
builds the CloudEvents and waits for Kafka's acknowledgement, `http.py` serves it all. People's
channels: `email/` (the SMTP server of the support mailbox) and `phone/` (Twilio voice and SMS
webhooks), on `people_common.py`, `people_store.py`, `people_settings.py`, `people_app.py`.
"""
