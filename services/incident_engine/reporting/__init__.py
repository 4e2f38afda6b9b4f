"""SLA reporting from the event log: streaming replays, what-if comparisons, compliance figures, HTML."""
