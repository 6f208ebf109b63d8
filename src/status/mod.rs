//! The status page, served by the master itself on its own socket, so it
//! answers even when every worker is busy — exactly when it is needed.
//!
//! It speaks FastCGI (nginx maps e.g. `/julia-fcgi-status` to it) and plain
//! HTTP GET (curl, `julia-fcgi status`, a load balancer's health check).
//! Paths ending in `ping` answer `pong`, paths ending in `ready` the pool's
//! readiness ([`health`]: 200 or 503); anything else is the status, as
//! text, `?json`, `?openmetrics`, each with `&full` for the workers.
//!
//! The health listener (`health_listen`, which may be on a private
//! interface) answers `ping` and `ready` only: the status page shows every
//! request's URI with its query string, so it stays on the status socket
//! (a unix socket or the loopback). Each listener holds at most
//! [`admission::MAX_CLIENTS`] clients at once, each for
//! [`CLIENT_TIMEOUT`] at most.

pub mod admission;
pub mod client;
pub mod health;
pub mod report;
pub mod stats;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::PoolName;
use crate::fastcgi::{self, EndRequest, Header, ProtocolStatus, RecordType};
use crate::listen::StatusSocket;
use crate::signals::Stop;
use admission::{Clients, Ticket, MAX_CLIENTS};
use health::Readiness;
pub use report::Report;

/// What every status connection answers from.
#[derive(Debug, Clone)]
pub struct Served {
    /// The latest report the pool published.
    pub reports: watch::Receiver<Arc<Report>>,
    /// The pool's own stop signal: begun from the first SIGTERM, through
    /// the drain delay (the workers still serve) and while they drain (the
    /// pool publishes no report then).
    pub stopping: watch::Receiver<Stop>,
    /// The pool's name, for the status page and the metrics' label.
    pub pool: Option<PoolName>,
}

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: the status page, ping, ready.
    Status,
    /// `ping` and `ready` only (the health listener).
    Health,
}

/// Serves the status socket and, when there is one, the health listener,
/// each in a task of its own; says in the log where.
pub fn spawn(socket: &StatusSocket, served: Served) -> std::io::Result<()> {
    tracing::info!("status page and ping on {}", socket.description());
    let fd = socket.fd().try_clone_to_owned()?;
    tokio::spawn(serve_scope(fd, served.clone(), Scope::Status));
    if let Some(health) = socket.health() {
        tracing::info!(
            "health checks (GET /ping, GET /ready) on {}",
            health.description
        );
        let fd = health.fd.try_clone()?;
        tokio::spawn(serve_scope(fd, served, Scope::Health));
    }
    Ok(())
}

/// The longest a status client may take to ask.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most params a FastCGI request for the status page may send.
const MAX_PARAMS: usize = 1 << 20;

/// Serves `scope` on `listener` (a listening socket, unix or TCP).
pub async fn serve_scope(listener: OwnedFd, served: Served, scope: Scope) {
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
        tokio::net::UnixListener::from_std(fd.into())
            .map(|l| tokio::spawn(accept_loop(l, served, scope)))
    } else {
        tokio::net::TcpListener::from_std(fd.into())
            .map(|l| tokio::spawn(accept_loop(l, served, scope)))
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

async fn accept_loop<L: Accept>(listener: L, served: Served, scope: Scope) {
    let name = match scope {
        Scope::Status => "status socket",
        Scope::Health => "health listener",
    };
    let clients = Clients::new(MAX_CLIENTS, name);
    loop {
        match listener.accept_one().await {
            Ok(stream) => spawn_answer(stream, served.clone(), scope, clients.admit()),
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!("status socket: accept failed: {e}");
    // Out of fds or similar: do not spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers one client in a task of its own, within [`CLIENT_TIMEOUT`], or
/// until a newer client takes its place ([`admission`]).
fn spawn_answer<S>(stream: S, served: Served, scope: Scope, ticket: Ticket)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            answered = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &served, scope)) => {
                if let Err(e) = answered {
                    tracing::debug!("status client too slow: {e}");
                }
            }
            () = ticket.ended() => tracing::debug!("status client ended for a newer one"),
        }
    });
}

async fn answer<S>(mut stream: S, served: &Served, scope: Scope)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut first = [0u8; 1];
    if stream.read_exact(&mut first).await.is_err() {
        return;
    }
    // A FastCGI record starts with its version; an HTTP request with a letter.
    let result = if first[0] == fastcgi::VERSION {
        fastcgi(&mut stream, served, scope).await
    } else {
        http(&mut stream, first[0], served, scope).await
    };
    if let Err(e) = result {
        tracing::debug!("status client: {e}");
    }
}

/// One answer of the status server, whichever protocol asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// "200 OK", "503 Service Unavailable", …
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    fn ok(content_type: &'static str, body: String) -> Page {
        Page {
            status: "200 OK",
            content_type,
            body,
        }
    }

    fn text(status: &'static str, body: impl Into<String>) -> Page {
        Page {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// The page for `path` and `query` in `scope`.
pub fn page(path: &str, query: &str, served: &Served, scope: Scope) -> Page {
    // /ping, /fpm-ping, /julia-fcgi-ping: whatever the web server maps.
    if path.ends_with("ping") {
        return Page::ok("text/plain", "pong\n".into());
    }
    if path.ends_with("ready") {
        let readiness = Readiness::of(&served.reports.borrow(), served.stopping.borrow().begun());
        let status = if readiness.is_ready() {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        return Page::text(status, readiness.text());
    }
    if scope == Scope::Health {
        return Page::text(
            "404 Not Found",
            format!(
                "{path}: this is julia-fcgi's health listener (health_listen), which answers \
                 GET /ping and GET /ready only; the status page is on status_listen (a unix \
                 socket or the loopback), or `julia-fcgi status` on the host\n"
            ),
        );
    }
    let has = |word: &str| query.split('&').any(|q| q == word);
    let report = Report::clone(&served.reports.borrow())
        .finish(has("full"))
        .named(served.pool.as_ref());
    if has("json") {
        Page::ok("application/json", report.json())
    } else if has("openmetrics") {
        Page::ok(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            report.openmetrics(),
        )
    } else {
        Page::ok("text/plain", report.text())
    }
}

async fn http<S>(stream: &mut S, first: u8, served: &Served, scope: Scope) -> std::io::Result<()>
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
    let page = if method != "GET" && method != "HEAD" {
        Page::text("405 Method Not Allowed", "only GET\n")
    } else {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        page(path, query, served, scope)
    };
    let response = format!(
        "HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        page.status,
        page.content_type,
        page.body.len(),
        if method == "HEAD" { "" } else { &page.body }
    );
    stream.write_all(response.as_bytes()).await
}

/// A minimal FastCGI responder: one request per connection, params read to
/// their end, the body ignored.
async fn fastcgi<S>(stream: &mut S, served: &Served, scope: Scope) -> std::io::Result<()>
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
    let page = page(path, get("QUERY_STRING"), served, scope);
    let status = match page.status {
        "200 OK" => String::new(),
        other => format!("Status: {other}\r\n"),
    };
    let payload = format!(
        "{status}Content-Type: {}\r\nCache-Control: no-store\r\n\r\n{}",
        page.content_type, page.body
    );
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
