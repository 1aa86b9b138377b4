"""The makers' web page: server-rendered (FastAPI + Jinja2), with an offline map."""
