"""The AU, US and UK phone lines: Twilio-convention voice and SMS webhooks."""
