"""The makelocal command line and the one-machine stack."""
