"""The support mailbox: an SMTP server that opens incidents and threads replies onto them."""
