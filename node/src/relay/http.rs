//! The relay's HTTP endpoint: `GET /metrics` answers the node's and the
//! relay's metrics as one OpenMetrics text document, and `GET /health`
//! answers `200 ok` while the last write to the relay store succeeded and
//! `503` with the reason while it fails (the records wait in the outbox).
//! Any other path is `404`, any other method `400`. One request per
//! connection: every answer says `connection: close` and the connection
//! ends after it.
//!
//! # Why hyper
//!
//! The HTTP/1.1 server is hyper 1.x (features `server` and `http1`) with
//! hyper-util's tokio adapters, not a hand-rolled parser and not a web
//! framework. hyper is the HTTP implementation most of Rust's servers and
//! clients are built on, maintained by the Tokio project, fuzzed, and
//! already in this tree: the DynamoDB backend's AWS SDK uses it as its
//! client. With only its server half and HTTP/1 on, the relay build adds
//! hyper, `httparse`, `http` and `http-body` (the last three small), and no
//! tower, routing or HTTP/2 stack; two routes need no framework.
//!
//! # Limits
//!
//! A client is untrusted: the endpoint reads a request head of at most
//! [`MAX_HTTP_HEAD`] bytes (a larger one gets `431` and the connection is
//! closed) within [`Limits::read_timeout`], serves at most
//! [`Limits::max_connections`] connections at once (more wait in the
//! listen backlog), and drops a connection that is not done within
//! [`Limits::connection_timeout`], so a slow reader cannot hold a slot for
//! good.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Largest request head the endpoint reads. hyper's read buffer cannot be
/// smaller (it panics below 8 KiB), and a scraper's `GET` is a few hundred
/// bytes.
pub(super) const MAX_HTTP_HEAD: usize = 8 * 1024;

const _: () = assert!(MAX_HTTP_HEAD >= 8192, "hyper's smallest max_buf_size");

/// The content type of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the endpoint waits before it retries a failed `accept` (out of
/// file descriptors, say), so that a lasting failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The endpoint's bounds on what one client may take.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// How long a connection may take to send its request head.
    pub(super) read_timeout: Duration,
    /// How long a connection may last in all, the answer's writing
    /// included.
    pub(super) connection_timeout: Duration,
    /// Connections served at once.
    pub(super) max_connections: usize,
}

impl Limits {
    /// What a relay runs with. Five seconds for a request head is ample on
    /// any network a scraper runs on; thirty for the whole exchange covers
    /// writing a large metrics document to a slow reader; 64 connections
    /// is far more than a few scrapers and health checks use, and bounds
    /// what a flood of connections costs the relay.
    pub(super) const DEFAULT: Limits = Limits {
        read_timeout: Duration::from_secs(5),
        connection_timeout: Duration::from_secs(30),
        max_connections: 64,
    };
}

/// What the endpoint answers with.
pub(super) trait Sources: Send + Sync + 'static {
    /// The metrics, as one OpenMetrics text document.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    /// Whether the relay is healthy; why not if not.
    fn health(&self) -> Result<(), String>;
}

/// Serves the endpoint on `listener` until the task is aborted.
pub(super) async fn serve<S: Sources>(listener: TcpListener, sources: S, limits: Limits) {
    let sources = Arc::new(sources);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HTTP_HEAD)
        .keep_alive(false);
    loop {
        // A slot before `accept`, so connections beyond the bound wait in
        // the kernel's backlog rather than in memory here.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                tracing::debug!(%e, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let sources = sources.clone();
        let connection = builder.serve_connection(
            TokioIo::new(socket),
            service_fn(move |request| {
                let sources = sources.clone();
                // Only the method and path matter; the request (and any
                // body) is dropped before the answer is made.
                let (get, path) = is_get_of(&request);
                async move { Ok::<_, Infallible>(answer(&*sources, get, &path).await) }
            }),
        );
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%e, "metrics endpoint: connection failed"),
                Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
            }
        });
    }
}

/// Whether a request is a `GET`, and its path (without a query).
fn is_get_of(request: &Request<Incoming>) -> (bool, String) {
    (request.method() == Method::GET, request.uri().path().to_owned())
}

/// The answer to a request for `path`, a `GET` if `get`.
async fn answer<S: Sources>(sources: &S, get: bool, path: &str) -> Response<Full<Bytes>> {
    if !get {
        return text(StatusCode::BAD_REQUEST, "text/plain", "bad request\n".into());
    }
    match path {
        "/metrics" => text(StatusCode::OK, OPENMETRICS, sources.metrics().await),
        "/health" => match sources.health() {
            Ok(()) => text(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("relay store unavailable: {e}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Fixed answers: the endpoint is what is under test.
    struct Fixed {
        healthy: AtomicBool,
    }

    impl Sources for Fixed {
        async fn metrics(&self) -> String {
            "# TYPE up gauge\nup 1\n# EOF\n".into()
        }
        fn health(&self) -> Result<(), String> {
            if self.healthy.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the store is down".into())
            }
        }
    }

    const QUICK: Limits = Limits {
        read_timeout: Duration::from_millis(300),
        connection_timeout: Duration::from_secs(5),
        max_connections: 2,
    };

    /// An endpoint on 127.0.0.1, healthy or not, and its address.
    async fn endpoint(healthy: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sources = Fixed { healthy: AtomicBool::new(healthy) };
        tokio::spawn(serve(listener, sources, QUICK));
        addr
    }

    /// Sends `request` raw and reads until the server closes: the whole
    /// answer, or what there was when it gave up.
    async fn exchange(addr: SocketAddr, request: Vec<u8>) -> String {
        tokio::task::spawn_blocking(move || {
            let mut socket = TcpStream::connect(addr).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // The server may close before it has read a request it refuses.
            let _ = socket.write_all(&request);
            let mut answer = Vec::new();
            let _ = socket.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap()
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n").into_bytes()
    }

    fn status_and_body(answer: &str) -> (&str, &str) {
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        (head.lines().next().unwrap_or_default(), body)
    }

    #[tokio::test]
    async fn test_health_metrics_and_unknown_paths_answer_and_close() {
        let addr = endpoint(true).await;
        let answer = exchange(addr, get("/health")).await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "ok\n"), "{answer}");
        let head = answer.to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{answer}");
        assert!(head.contains("content-type: text/plain"), "{answer}");

        // A query string is not part of the path.
        let answer = exchange(addr, get("/metrics?name[]=up")).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
        assert_eq!(body, "# TYPE up gauge\nup 1\n# EOF\n");
        assert!(answer.contains(OPENMETRICS), "{answer}");

        let answer = exchange(addr, get("/")).await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 404 Not Found", "not found\n"));
        let post = b"POST /health HTTP/1.1\r\nhost: relay\r\ncontent-length: 2\r\n\r\nhi".to_vec();
        let answer = exchange(addr, post).await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 400 Bad Request", "bad request\n"));
    }

    #[tokio::test]
    async fn test_an_unhealthy_store_is_a_503_with_the_reason() {
        let addr = endpoint(false).await;
        let answer = exchange(addr, get("/health")).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{answer}");
        assert_eq!(body, "relay store unavailable: the store is down\n");
    }

    #[tokio::test]
    async fn test_an_oversized_head_or_a_silent_client_is_cut_off_and_others_are_served() {
        let addr = endpoint(true).await;
        // A head over the cap: refused with a 431 without being read to
        // its end. Closing with the rest unread resets the connection,
        // which may reach the client before the answer does.
        let mut huge = b"GET /health HTTP/1.1\r\nhost: relay\r\nx-filler: ".to_vec();
        huge.resize(4 * MAX_HTTP_HEAD, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(addr, huge).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "an oversized head got {answer:?}"
        );

        // Two clients that connect and say nothing take both slots until
        // the read timeout drops them; then a third is served.
        let silent: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = std::time::Instant::now();
        let answer = exchange(addr, get("/health")).await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "ok\n"), "{answer}");
        assert!(
            started.elapsed() >= QUICK.read_timeout / 2,
            "served before a slot was free: {:?}",
            started.elapsed()
        );
        drop(silent);
    }
}
