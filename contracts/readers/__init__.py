"""Readers turn what people publish (OKH, OKW, catalogues) into our models. Pure."""
