//! Request-path routing of the HTTP stats server (`--stats-http`): `/metrics` gets the
//! Prometheus exposition, `/` and every other path the stats JSON.

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The stats JSON document.
    Json,
    /// The Prometheus exposition.
    Metrics,
}

/// The route of an HTTP request (its request line's path, without the query).
pub fn route(request: &[u8]) -> Route {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Route::Metrics,
        _ => Route::Json,
    }
}

/// The HTTP answer carrying `body` as what `route` asks for.
pub fn response(route: Route, body: &str) -> String {
    match route {
        Route::Json => crate::stats::http_response(body),
        Route::Metrics => crate::metrics::http_response(body),
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
        assert_eq!(route(b""), Route::Json);
        assert_eq!(route(b"garbage"), Route::Json);
    }
}
