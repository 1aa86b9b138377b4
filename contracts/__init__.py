"""Models, readers and events shared by every makelocal service."""
