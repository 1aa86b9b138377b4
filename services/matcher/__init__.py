"""The matcher: a live capability index that emits every new and withdrawn match."""
