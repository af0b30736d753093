"""The notifier worker: fans new articles out to email and webhook subscribers."""
