"""The example vassal's WSGI app: answers every request with a greeting."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello from a uWSGI vassal governed by the Rust emperor\n"]
