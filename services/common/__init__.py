"""What every makelocal service needs: settings, database, NATS, HTTP errors, metrics."""
