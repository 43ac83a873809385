//! A hostile HTTP/2 client that never reads: it announces `SETTINGS_INITIAL_WINDOW_SIZE = 0`,
//! opens one stream per target and never grants a byte of window, so a gateway can send each
//! response head but no body byte. What a gateway must do with such a stream (SPEC §10) is
//! reset it after `client_write_timeout`; [`stall`] reports how and when each stream ended.
//!
//! It speaks over any byte stream (plain TCP for h2c, a TLS stream with ALPN `h2`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::HarnessError;

/// How one stream of the attack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Reset by the server (`RST_STREAM`), or its connection went away (`GOAWAY`, close), this
    /// long after the response head arrived (after the request was sent, when no head came).
    Reset(Duration),
    /// The whole response arrived (possible only for an empty body).
    Completed,
    /// Still open when the attack stopped waiting.
    Open,
}

/// What the attacking connection saw.
#[derive(Debug, Clone, Default)]
pub struct Stalled {
    /// The status of each response head received, in no particular order.
    pub statuses: Vec<u16>,
    /// How each stream ended, in the order of `targets`.
    pub ends: Vec<Option<StreamEnd>>,
    /// Body bytes received over all streams (the client granted no window: any byte here is a
    /// flow-control violation).
    pub body_bytes: usize,
}

impl Stalled {
    /// How many streams ended as `Reset`.
    pub fn resets(&self) -> usize {
        self.ends
            .iter()
            .filter(|e| matches!(e, Some(StreamEnd::Reset(_))))
            .count()
    }

    /// Checks what a gateway that enforces a write timeout of `timeout` must have done with
    /// an attack of `streams` streams: each got its response head and was reset at the timeout
    /// (not before half of it, not later than `slack` after it, counted from its head), and no
    /// body byte went past the zero window.
    ///
    /// # Errors
    /// What did not hold, with the streams' ends.
    pub fn check_reset_at(
        &self,
        streams: usize,
        timeout: Duration,
        slack: Duration,
    ) -> Result<(), String> {
        if self.statuses.len() != streams || self.resets() != streams {
            return Err(format!("{streams} heads and resets expected: {self:?}"));
        }
        let off = self.ends.iter().find(|e| {
            matches!(e, Some(StreamEnd::Reset(after)) if *after < timeout / 2 || *after >= timeout + slack)
        });
        if let Some(end) = off {
            return Err(format!(
                "a stream ended {end:?}, the timeout is {timeout:?}"
            ));
        }
        if self.body_bytes > 0 {
            return Err(format!("{} bytes past a zero window", self.body_bytes));
        }
        Ok(())
    }

    /// The latest reset, measured from its own response head.
    pub fn latest_reset(&self) -> Option<Duration> {
        self.ends
            .iter()
            .filter_map(|e| match e {
                Some(StreamEnd::Reset(after)) => Some(*after),
                _ => None,
            })
            .max()
    }
}

/// How the attacker reaches the gateway.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTP/2 with prior knowledge on plain TCP.
    H2c,
    /// TLS with ALPN `h2`, trusting only the CA certificate `ca_der`, for server name `name`.
    Tls {
        /// The CA certificate (DER).
        ca_der: Vec<u8>,
        /// The name the server's certificate must carry (SNI).
        name: String,
    },
}

/// Connects to `addr` over `transport` and runs [`stall`] on its own runtime (blocking).
///
/// # Errors
/// The connection or TLS handshake fails, or as [`stall`].
pub fn stall_at(
    addr: SocketAddr,
    transport: &Transport,
    authority: &str,
    targets: &[String],
    hold: Duration,
) -> Result<Stalled, HarnessError> {
    runtime()?.block_on(async {
        let (io, scheme) = connect(addr, transport).await?;
        stall(io, scheme, authority, targets, hold).await
    })
}

/// The status of an ordinary `GET scheme://authority target` on a new connection to `addr`
/// over `transport`, reading (and granting window for) the whole body, within `timeout`.
///
/// # Errors
/// The connection, the handshake or the exchange fails, or takes longer than `timeout`.
pub fn fetch_status(
    addr: SocketAddr,
    transport: &Transport,
    authority: &str,
    target: &str,
    timeout: Duration,
) -> Result<u16, HarnessError> {
    let exchange = async {
        let (io, scheme) = connect(addr, transport).await?;
        let window = 1024 * 1024;
        let (status, _) = get(io, scheme, authority, target, window, Duration::ZERO).await?;
        Ok(status)
    };
    runtime()?.block_on(async {
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HarnessError::Http(format!("no answer within {timeout:?}")))?
    })
}

/// A slow but honest reader: `GET scheme://authority target` on a new connection to `addr`
/// over `transport`, granting `window` bytes at a time and waiting `pause` before each grant.
/// Returns the status, the body bytes received and how long the whole exchange took.
///
/// # Errors
/// The connection, the handshake or the exchange fails (a reset stream included).
pub fn read_slowly(
    addr: SocketAddr,
    transport: &Transport,
    authority: &str,
    target: &str,
    window: u32,
    pause: Duration,
) -> Result<(u16, usize, Duration), HarnessError> {
    runtime()?.block_on(async {
        let started = Instant::now();
        let (io, scheme) = connect(addr, transport).await?;
        let (status, received) = get(io, scheme, authority, target, window, pause).await?;
        Ok((status, received, started.elapsed()))
    })
}

/// `GET scheme://authority target` on `io`, granting `window` bytes at a time, `pause` after
/// each window used up; the status and the body bytes received.
async fn get(
    io: Box<dyn Io>,
    scheme: &str,
    authority: &str,
    target: &str,
    window: u32,
    pause: Duration,
) -> Result<(u16, usize), HarnessError> {
    let http = |what: &str, e: &dyn std::fmt::Display| HarnessError::Http(format!("{what}: {e}"));
    let (client, connection) = ::h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| http("HTTP/2 handshake", &e))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("{scheme}://{authority}{target}"))
        .body(())
        .map_err(|e| http("request", &e))?;
    let mut client = client.ready().await.map_err(|e| http("ready", &e))?;
    let (response, _) = client
        .send_request(request, true)
        .map_err(|e| http("send request", &e))?;
    let head = response.await.map_err(|e| http("response", &e))?;
    let status = head.status().as_u16();
    let mut body = head.into_body();
    let (mut received, mut unreleased) = (0, 0);
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| http("body", &e))?;
        received += data.len();
        unreleased += data.len();
        // The window is used up: the server waits for the next grant.
        if unreleased >= window as usize {
            tokio::time::sleep(pause).await;
            let _ = body.flow_control().release_capacity(unreleased);
            unreleased = 0;
        }
    }
    driver.abort();
    Ok((status, received))
}

/// A byte stream either transport gives.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn runtime() -> Result<tokio::runtime::Runtime, HarnessError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HarnessError::io("tokio runtime", e))
}

/// A connection to `addr` over `transport`, and the URL scheme it carries.
async fn connect(
    addr: SocketAddr,
    transport: &Transport,
) -> Result<(Box<dyn Io>, &'static str), HarnessError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
    Ok(match transport {
        Transport::H2c => (Box::new(tcp), "http"),
        Transport::Tls { ca_der, name } => (Box::new(tls_h2(tcp, ca_der, name).await?), "https"),
    })
}

/// A TLS client handshake on `tcp` offering only `h2`; fails unless the server chose it.
async fn tls_h2(
    tcp: TcpStream,
    ca_der: &[u8],
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HarnessError> {
    let tls_err = |e: &dyn std::fmt::Display| HarnessError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.to_vec().into()).map_err(|e| tls_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server = ServerName::try_from(name.to_owned()).map_err(|e| tls_err(&e))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await
        .map_err(|e| tls_err(&e))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(HarnessError::Tls("the server did not choose h2".to_owned()));
    }
    Ok(tls)
}

/// Opens a stream on `io` for each of `targets` (`GET scheme://authority target`, all at once,
/// as many as the server's concurrency limit lets in), never reads a body byte, and waits until
/// every stream has ended or `hold` has passed since the first request.
///
/// # Errors
/// [`HarnessError::Http`] when the HTTP/2 handshake fails or a request cannot be sent.
pub async fn stall<T>(
    io: T,
    scheme: &str,
    authority: &str,
    targets: &[String],
    hold: Duration,
) -> Result<Stalled, HarnessError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |what: &str, e: &dyn std::fmt::Display| HarnessError::Http(format!("{what}: {e}"));
    let (mut client, connection) = ::h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| http("HTTP/2 handshake", &e))?;
    let driver = tokio::spawn(connection);
    let until = tokio::time::Instant::now() + hold;
    let mut streams = Vec::with_capacity(targets.len());
    for target in targets {
        let request = http::Request::get(format!("{scheme}://{authority}{target}"))
            .body(())
            .map_err(|e| http("request", &e))?;
        client = match tokio::time::timeout_at(until, client.clone().ready()).await {
            Ok(ready) => ready.map_err(|e| http("stream slot", &e))?,
            Err(_) => break,
        };
        let (response, _) = client
            .send_request(request, true)
            .map_err(|e| http("send request", &e))?;
        streams.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reset = |_| (None, StreamEnd::Reset(sent.elapsed()), 0);
            let head = match tokio::time::timeout_at(until, response).await {
                Ok(Ok(head)) => head,
                Ok(Err(e)) => return reset(e),
                Err(_) => return (None, StreamEnd::Open, 0),
            };
            let status = Some(head.status().as_u16());
            let sent = Instant::now();
            let mut body = head.into_body();
            let mut bytes = 0;
            loop {
                // The window is never released: nothing is read, whatever arrives.
                match tokio::time::timeout_at(until, body.data()).await {
                    Ok(Some(Ok(data))) => bytes += data.len(),
                    Ok(Some(Err(_))) => return (status, StreamEnd::Reset(sent.elapsed()), bytes),
                    Ok(None) => return (status, StreamEnd::Completed, bytes),
                    Err(_) => return (status, StreamEnd::Open, bytes),
                }
            }
        }));
    }
    let mut stalled = Stalled {
        ends: vec![None; targets.len()],
        ..Stalled::default()
    };
    for (i, stream) in streams.into_iter().enumerate() {
        let (status, end, bytes) = stream.await.map_err(|e| http("stream task", &e))?;
        stalled.statuses.extend(status);
        stalled.ends[i] = Some(end);
        stalled.body_bytes += bytes;
    }
    drop(client);
    driver.abort();
    Ok(stalled)
}
