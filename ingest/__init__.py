"""What people publish (OKH manifests, OKW records, catalogues and other import formats),
read into the models of contracts/ and into the records `makelocal import` sends. Pure.
Above contracts/, below the services: tests/unit/test_layering.py keeps it so."""
