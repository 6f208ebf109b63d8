//! The status page, served by the master itself on its own socket, so it
//! answers even when every worker is busy — exactly when it is needed.
//!
//! It speaks FastCGI (nginx maps e.g. `/julia-fcgi-status` to it) and plain
//! HTTP GET (curl, `julia-fcgi status`, a load balancer's health check).
//! Paths ending in `ping` answer `pong`; anything else is the status, as
//! text, `?json`, `?openmetrics`, each with `&full` for the workers.

pub mod client;
pub mod report;
pub mod stats;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::fastcgi::{self, EndRequest, Header, ProtocolStatus, RecordType};
pub use report::Report;

/// The longest a status client may take to ask.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most params a FastCGI request for the status page may send.
const MAX_PARAMS: usize = 1 << 20;

/// Serves the status on `listener` (a listening socket, unix or TCP) from the
/// latest report the pool published.
pub async fn serve(listener: OwnedFd, reports: watch::Receiver<Arc<Report>>) {
    let std_listener = std::os::unix::net::UnixListener::from(listener);
    if let Err(e) = std_listener.set_nonblocking(true) {
        tracing::error!("status socket unusable: {e}");
        return;
    }
    let fd: OwnedFd = std_listener.into();
    let is_unix = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
    )
    .map(|a| a.as_unix_addr().is_some())
    .unwrap_or(true);
    let result = if is_unix {
        tokio::net::UnixListener::from_std(fd.into()).map(|l| tokio::spawn(accept_loop(l, reports)))
    } else {
        tokio::net::TcpListener::from_std(fd.into()).map(|l| tokio::spawn(accept_loop(l, reports)))
    };
    if let Err(e) = result {
        tracing::error!("status socket unusable: {e}");
    }
}

/// A listener of either kind, for one accept loop.
trait Accept {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self)
        -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

async fn accept_loop<L: Accept>(listener: L, reports: watch::Receiver<Arc<Report>>) {
    loop {
        match listener.accept_one().await {
            Ok(stream) => spawn_answer(stream, reports.clone()),
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!("status socket: accept failed: {e}");
    // Out of fds or similar: do not spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_answer<S>(stream: S, reports: watch::Receiver<Arc<Report>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, reports)).await {
            tracing::debug!("status client too slow: {e}");
        }
    });
}

async fn answer<S>(mut stream: S, reports: watch::Receiver<Arc<Report>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut first = [0u8; 1];
    if stream.read_exact(&mut first).await.is_err() {
        return;
    }
    // A FastCGI record starts with its version; an HTTP request with a letter.
    let result = if first[0] == fastcgi::VERSION {
        fastcgi(&mut stream, &reports).await
    } else {
        http(&mut stream, first[0], &reports).await
    };
    if let Err(e) = result {
        tracing::debug!("status client: {e}");
    }
}

/// The page for `path` and `query`: (content type, body).
fn page(path: &str, query: &str, reports: &watch::Receiver<Arc<Report>>) -> (&'static str, String) {
    // /ping, /fpm-ping, /julia-fcgi-ping: whatever the web server maps.
    if path.ends_with("ping") {
        return ("text/plain", "pong\n".into());
    }
    let has = |word: &str| query.split('&').any(|q| q == word);
    let report = Report::clone(&reports.borrow()).finish(has("full"));
    if has("json") {
        ("application/json", report.json())
    } else if has("openmetrics") {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            report.openmetrics(),
        )
    } else {
        ("text/plain", report.text())
    }
}

async fn http<S>(
    stream: &mut S,
    first: u8,
    reports: &watch::Receiver<Arc<Report>>,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = vec![first];
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (content_type, body) = page(path, query, reports);
        ("200 OK", content_type, body)
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if method == "HEAD" { "" } else { &body }
    );
    stream.write_all(response.as_bytes()).await
}

/// A minimal FastCGI responder: one request per connection, params read to
/// their end, the body ignored.
async fn fastcgi<S>(stream: &mut S, reports: &watch::Receiver<Arc<Report>>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some((id, params)) = read_params(stream).await? else {
        return Ok(());
    };
    let params: Vec<(String, String)> = fastcgi::decode_pairs(&params)
        .map_while(Result::ok)
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let path = [get("DOCUMENT_URI"), get("SCRIPT_NAME"), get("REQUEST_URI")]
        .into_iter()
        .find(|p| !p.is_empty())
        .unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (content_type, body) = page(path, get("QUERY_STRING"), reports);
    let payload = format!("Content-Type: {content_type}\r\nCache-Control: no-store\r\n\r\n{body}");
    let mut out = Vec::new();
    fastcgi::push_stream(
        &mut out,
        RecordType::Stdout,
        id,
        payload.as_bytes(),
        fastcgi::MAX_CONTENT_LEN,
    );
    let end = EndRequest {
        app_status: 0,
        protocol_status: ProtocolStatus::RequestComplete,
    };
    fastcgi::push_record(&mut out, RecordType::EndRequest, id, &end.encode());
    stream.write_all(&out).await
}

/// Reads records up to the end of the params (an empty `PARAMS` record),
/// the version byte already read: the request id and the params' content,
/// or `None` for a stream that is not a request this server answers.
async fn read_params<S>(stream: &mut S) -> std::io::Result<Option<(u16, Vec<u8>)>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut params = Vec::new();
    let mut version_read = true;
    loop {
        let mut bytes = [0u8; fastcgi::HEADER_LEN];
        let start = if std::mem::take(&mut version_read) {
            bytes[0] = fastcgi::VERSION;
            1
        } else {
            0
        };
        stream.read_exact(&mut bytes[start..]).await?;
        let header = Header::decode(bytes);
        let mut content = vec![0u8; header.body_len()];
        stream.read_exact(&mut content).await?;
        content.truncate(header.content_len.into());
        match header.kind {
            RecordType::Params if content.is_empty() => {
                // The request is complete enough to answer.
                return Ok(Some((header.request_id, params)));
            }
            RecordType::Params => {
                if params.len() + content.len() > MAX_PARAMS {
                    return Ok(None);
                }
                params.extend_from_slice(&content);
            }
            RecordType::BeginRequest | RecordType::Stdin => {}
            _ => return Ok(None),
        }
    }
}
