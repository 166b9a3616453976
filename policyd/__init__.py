"""congvu policyd: the Postfix SMTPD access policy server (CT25-3, CT25-5.1, TH13-9, CT15-8)."""
