"""The content milter: what is inside a message, checked at SMTP time (TH13-9, CT25-5.1, TH13-6, TH13-7, CT25-3.2)."""
