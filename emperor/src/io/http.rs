//! Request-path routing of the HTTP stats server (`--stats-http`): `/metrics` gets the
//! Prometheus exposition, `/status` the HTML status page, `/` and every other path the stats
//! JSON.

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The stats JSON document.
    Json,
    /// The Prometheus exposition.
    Metrics,
    /// The HTML status page (static; its script polls `/` for the stats JSON).
    Status,
}

/// The status page: a vassal table that its inline script refreshes from `/` every second.
pub const STATUS_PAGE: &str = include_str!("../status.html");

/// The route of an HTTP request (its request line's path, without the query).
pub fn route(request: &[u8]) -> Route {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Route::Metrics,
        b"/status" => Route::Status,
        _ => Route::Json,
    }
}

/// The HTTP answer carrying `body` as what `route` asks for.
pub fn response(route: Route, body: &str) -> String {
    match route {
        Route::Json => crate::stats::http_response(body),
        Route::Metrics => crate::metrics::http_response(body),
        Route::Status => format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Json);
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Route::Json);
        assert_eq!(route(b"GET /status HTTP/1.1\r\n\r\n"), Route::Status);
        assert_eq!(route(b""), Route::Json);
        assert_eq!(route(b"garbage"), Route::Json);
    }
}
