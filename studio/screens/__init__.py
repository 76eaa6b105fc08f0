"""Modal screens: errors, confirmations, a one-line prompt."""
