"""Quotas by mailbox type, warnings near the limit, refusing mail to full mailboxes (CT25-5.1)."""
