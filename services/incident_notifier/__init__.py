"""The reference notifier: delivers the engine's warnings, breaches and failover orders to people and
automation (signed webhooks, Slack, email, PagerDuty), at least once per destination and once in effect."""
