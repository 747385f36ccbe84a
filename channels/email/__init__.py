"""Email: SMTP server, IMAP polling and provider webhooks in; SMTP out; threads by Message-ID."""
