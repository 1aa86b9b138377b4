"""The registry: stores OKH designs and OKW facilities, announces every change on NATS."""
