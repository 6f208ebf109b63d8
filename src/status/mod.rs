//! The status page, served by the master itself on its own socket, so it
//! answers even when every worker is busy — exactly when it is needed.
//!
//! It speaks FastCGI (nginx maps e.g. `/julia-fcgi-status` to it) and plain
//! HTTP GET (curl, `julia-fcgi status`, a load balancer's health check).
//! Paths ending in `ping` answer `pong`; anything else is the status, as
//! text, `?json`, `?openmetrics`, each with `&full` for the workers.

pub mod client;
pub mod report;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub use report::Report;

/// The longest a status client may take to ask.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

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
    // A FastCGI record starts with version 1; an HTTP request with a letter.
    let result = if first[0] == 1 {
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
    let mut params = Vec::new();
    let mut id: u16;
    let mut first_byte = Some(1u8);
    loop {
        let mut header = [0u8; 8];
        let start = match first_byte.take() {
            Some(b) => {
                header[0] = b;
                1
            }
            None => 0,
        };
        stream.read_exact(&mut header[start..]).await?;
        let kind = header[1];
        id = u16::from_be_bytes([header[2], header[3]]);
        let len = u16::from_be_bytes([header[4], header[5]]) as usize;
        let mut content = vec![0u8; len + header[6] as usize];
        stream.read_exact(&mut content).await?;
        content.truncate(len);
        match kind {
            4 if len > 0 => {
                if params.len() + len > 1 << 20 {
                    return Ok(());
                }
                params.extend_from_slice(&content);
            }
            // Empty PARAMS: the request is complete enough to answer.
            4 => break,
            1 | 5 => {}
            _ => return Ok(()),
        }
    }
    let params = decode_pairs(&params);
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
    let mut out = Vec::new();
    let payload = format!("Content-Type: {content_type}\r\nCache-Control: no-store\r\n\r\n{body}");
    for chunk in payload.as_bytes().chunks(65535) {
        out.extend(record(6, id, chunk));
    }
    out.extend(record(6, id, &[]));
    out.extend(record(3, id, &[0, 0, 0, 0, 0, 0, 0, 0]));
    stream.write_all(&out).await
}

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let pad = (8 - content.len() % 8) % 8;
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[pad as u8, 0]);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, pad));
    out
}

fn decode_pairs(mut data: &[u8]) -> Vec<(String, String)> {
    fn length(data: &mut &[u8]) -> Option<usize> {
        let first = *data.first()?;
        if first < 0x80 {
            *data = &data[1..];
            Some(first as usize)
        } else {
            let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
            *data = &data[4..];
            Some((u32::from_be_bytes(bytes) & 0x7fff_ffff) as usize)
        }
    }
    let mut pairs = Vec::new();
    while let (Some(k), Some(v)) = (length(&mut data), length(&mut data)) {
        if data.len() < k + v {
            break;
        }
        pairs.push((
            String::from_utf8_lossy(&data[..k]).into_owned(),
            String::from_utf8_lossy(&data[k..k + v]).into_owned(),
        ));
        data = &data[k + v..];
    }
    pairs
}
