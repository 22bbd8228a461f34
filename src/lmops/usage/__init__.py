"""Request records, the usage ledger, pricing and reports."""
