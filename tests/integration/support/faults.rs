//! A fault-injecting proxy on 127.0.0.1, put between the operator and a real
//! server: moto (HTTP, one request at a time) or PostgreSQL (plain TCP).
//!
//! It forwards real traffic unchanged, except that, at a set rate, it answers
//! a request itself with what AWS sends when it is in trouble (HTTP 500, 503,
//! `ThrottlingException` for the JSON services, `SlowDown` for S3), delays
//! it, drops or resets the connection before forwarding, or forwards the
//! request and then resets the connection instead of answering (the write
//! happened; the client cannot know). For PostgreSQL it resets or drops new
//! connections or slows them down (at the rate), and resets established
//! ones before a message reaches the server or after (its answer lost), at
//! a twentieth of the rate per message. Every fault is counted. Decisions come from a seeded
//! RNG; the requests they land on depend on scheduling, so a seed gives the
//! same mix of faults, not the same run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy did instead of (or on top of) forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// HTTP 500 with the service's error body.
    Http500,
    /// HTTP 503 `ServiceUnavailable`.
    Http503,
    /// KMS / Secrets Manager: HTTP 400 `ThrottlingException`.
    Throttling,
    /// S3: HTTP 503 `SlowDown`.
    SlowDown,
    /// Forwarded after 50-400 ms.
    Latency,
    /// The request was read and the connection closed without an answer.
    Dropped,
    /// The request was read and the connection reset (RST).
    Reset,
    /// Forwarded, answered by the server, then the connection reset instead
    /// of passing the answer on.
    LostResponse,
    /// PostgreSQL: a new connection reset at once.
    ResetAtConnect,
    /// PostgreSQL: a new connection closed at once.
    DroppedAtConnect,
    /// PostgreSQL: an established connection reset before a message reached
    /// the server.
    ResetMidStream,
    /// PostgreSQL: a message forwarded, then the connection reset before
    /// the answer came back.
    LostAnswer,
    /// PostgreSQL: every chunk of a connection delayed.
    SlowConnection,
    /// TCP: an open connection reset by [`FaultProxy::sever_all`] (e.g. a
    /// watch on the API server broken by the network).
    Severed,
}

const HTTP_FAULTS: &[Fault] = &[
    Fault::Http500,
    Fault::Http503,
    Fault::Throttling,
    Fault::Latency,
    Fault::Dropped,
    Fault::Reset,
    Fault::LostResponse,
];

const TCP_FAULTS: &[Fault] = &[
    Fault::ResetAtConnect,
    Fault::DroppedAtConnect,
    Fault::SlowConnection,
];

/// Mid-stream faults strike single messages of long-lived (pooled)
/// connections, at a twentieth of the rate: one step sends dozens of
/// statements, and a fifth of them cut would leave no step a chance.
const MID_STREAM_DIVISOR: f64 = 20.0;

struct Shared {
    upstream: SocketAddr,
    rate: f64,
    enabled: AtomicBool,
    rng: Mutex<StdRng>,
    counts: Mutex<BTreeMap<Fault, u64>>,
    /// Requests (HTTP) or connections (TCP) seen while enabled.
    seen: AtomicU64,
    /// Bumped to reset every open TCP connection at once.
    severed: tokio::sync::watch::Sender<u64>,
    /// Every new TCP connection is reset, as by a server that is down.
    refusing: AtomicBool,
}

impl Shared {
    /// The fault for the next request or connection, if any (and counts it).
    fn pick(&self, kinds: &[Fault]) -> Option<Fault> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        let mut rng = self.rng.lock().unwrap();
        if !rng.random_bool(self.rate) {
            return None;
        }
        Some(kinds[rng.random_range(0..kinds.len())])
    }

    /// Whether to cut a connection at this message (and how).
    fn pick_mid_stream(&self) -> Option<Fault> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        if !rng.random_bool(self.rate / MID_STREAM_DIVISOR) {
            return None;
        }
        Some(if rng.random_bool(0.5) {
            Fault::ResetMidStream
        } else {
            Fault::LostAnswer
        })
    }

    fn count_of(&self, fault: Fault) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&fault)
            .copied()
            .unwrap_or(0)
    }

    fn count(&self, fault: Fault) {
        *self.counts.lock().unwrap().entry(fault).or_default() += 1;
    }

    fn random_range(&self, range: std::ops::Range<u64>) -> u64 {
        self.rng.lock().unwrap().random_range(range)
    }
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// An HTTP proxy in front of an AWS-compatible server (moto).
    pub async fn http(upstream: SocketAddr, rate: f64, seed: u64) -> Self {
        Self::start(upstream, rate, seed, true).await
    }

    /// A TCP proxy in front of PostgreSQL.
    pub async fn tcp(upstream: SocketAddr, rate: f64, seed: u64) -> Self {
        Self::start(upstream, rate, seed, false).await
    }

    async fn start(upstream: SocketAddr, rate: f64, seed: u64, http: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            rate,
            enabled: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counts: Mutex::new(BTreeMap::new()),
            seen: AtomicU64::new(0),
            severed: tokio::sync::watch::Sender::new(0),
            refusing: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let sh = sh.clone();
                if http {
                    tokio::spawn(serve_http(client, sh));
                } else {
                    tokio::spawn(serve_tcp(client, sh));
                }
            }
        });
        Self { addr, shared, task }
    }

    /// Starts (or stops) injecting; a new proxy only forwards.
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::Relaxed);
    }

    /// How many of each fault were injected so far.
    pub fn counts(&self) -> BTreeMap<Fault, u64> {
        self.shared.counts.lock().unwrap().clone()
    }

    pub fn injected(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Requests (HTTP) or connections (TCP) that went through while enabled.
    pub fn seen(&self) -> u64 {
        self.shared.seen.load(Ordering::Relaxed)
    }

    /// Resets every connection open through a TCP proxy now, as a network
    /// failure would, and returns how many there were. New connections go
    /// through as before.
    pub async fn sever_all(&self) -> u64 {
        let before = self.shared.count_of(Fault::Severed);
        let open = self.shared.severed.receiver_count() as u64;
        self.shared.severed.send_modify(|n| *n += 1);
        // Each connection counts itself as it goes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.shared.count_of(Fault::Severed) < before + open
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared.count_of(Fault::Severed) - before
    }

    /// Refuses (resets) every new TCP connection while `on`, whatever the
    /// fault rate: the server behind it looks down.
    pub fn set_refusing(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::Relaxed);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The host and port of a URL, as a socket address on 127.0.0.1.
pub fn socket_of(url: &str) -> SocketAddr {
    let url = url::Url::parse(url).expect("a URL");
    assert_eq!(
        url.host_str(),
        Some("127.0.0.1"),
        "the proxy only fronts local servers"
    );
    SocketAddr::from(([127, 0, 0, 1], url.port_or_known_default().expect("port")))
}

/// `url` with its port replaced.
pub fn with_port(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_port(Some(port)).expect("settable port");
    url.to_string()
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

// --- HTTP ---------------------------------------------------------------

struct Request {
    raw: Vec<u8>,
    /// JSON protocol (KMS, Secrets Manager): the `X-Amz-Target` header is set.
    json: bool,
    head_only: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of a complete chunked body at the start of `body`, if complete.
fn chunked_len(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find(&body[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + find(&body[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > body.len() {
            return None;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one whole request (head and body) from the client.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let (mut length, mut chunked, mut json) = (0usize, false, false);
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "x-amz-target" => json = true,
            _ => {}
        }
    }
    let body_len = if chunked {
        loop {
            if let Some(n) = chunked_len(&buf[head_end..]) {
                break n;
            }
            if !read_more(stream, buf).await {
                return None;
            }
        }
    } else {
        length
    };
    while buf.len() < head_end + body_len {
        if !read_more(stream, buf).await {
            return None;
        }
    }
    let raw: Vec<u8> = buf.drain(..head_end + body_len).collect();
    Some(Request {
        head_only: head.starts_with("HEAD "),
        raw,
        json,
    })
}

/// The request with `Connection: close`, so the server ends its answer by
/// closing: the proxy then needs no response framing.
fn closing(raw: &[u8]) -> Vec<u8> {
    let head_end = find(raw, b"\r\n\r\n").map_or(raw.len(), |p| p + 2);
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&raw[head_end..]);
    bytes
}

/// Sends the request to the server and reads its whole answer.
async fn forward(upstream: SocketAddr, raw: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut server = TcpStream::connect(upstream).await.ok()?;
        server.write_all(&closing(raw)).await.ok()?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .ok()
        .flatten()
}

/// The server's answer with `Connection: close` (the proxy closes after it).
fn closing_answer(answer: &[u8]) -> Vec<u8> {
    closing(answer)
}

fn error_answer(fault: Fault, request: &Request) -> Vec<u8> {
    let (status, reason, code) = match (fault, request.json) {
        (Fault::Http500, true) => (500, "Internal Server Error", "InternalFailure"),
        (Fault::Http500, false) => (500, "Internal Server Error", "InternalError"),
        (Fault::Http503, _) => (503, "Service Unavailable", "ServiceUnavailable"),
        (Fault::Throttling, true) => (400, "Bad Request", "ThrottlingException"),
        (Fault::Throttling | Fault::SlowDown, false) => (503, "Slow Down", "SlowDown"),
        _ => unreachable!("not an answer: {fault:?}"),
    };
    let (content_type, body) = if request.json {
        (
            "application/x-amz-json-1.1",
            format!(r#"{{"__type":"{code}","message":"injected by the test's fault proxy"}}"#),
        )
    } else {
        (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the test's fault proxy</Message><RequestId>fault</RequestId></Error>"
            ),
        )
    };
    let body = if request.head_only {
        String::new()
    } else {
        body
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         x-amzn-RequestId: fault\r\nx-amz-request-id: fault\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request per connection: every answer closes it, so the client never
/// reuses a connection the proxy has finished with.
async fn serve_http(mut client: TcpStream, sh: Arc<Shared>) {
    let mut buf = Vec::new();
    let Some(request) = read_request(&mut client, &mut buf).await else {
        return;
    };
    let fault = sh.pick(HTTP_FAULTS).map(|f| match (f, request.json) {
        (Fault::Throttling, false) => Fault::SlowDown,
        (f, _) => f,
    });
    if let Some(f) = fault {
        sh.count(f);
    }
    match fault {
        Some(f @ (Fault::Http500 | Fault::Http503 | Fault::Throttling | Fault::SlowDown)) => {
            let _ = client.write_all(&error_answer(f, &request)).await;
            let _ = client.shutdown().await;
        }
        Some(Fault::Dropped) => drop(client),
        Some(Fault::Reset) => reset(&client),
        Some(Fault::LostResponse) => {
            let _ = forward(sh.upstream, &request.raw).await;
            reset(&client);
        }
        Some(Fault::Latency) | None => {
            if fault.is_some() {
                tokio::time::sleep(Duration::from_millis(sh.random_range(50..400))).await;
            }
            match forward(sh.upstream, &request.raw).await {
                Some(answer) => {
                    let _ = client.write_all(&closing_answer(&answer)).await;
                    let _ = client.shutdown().await;
                }
                None => reset(&client),
            }
        }
        Some(other) => unreachable!("not an HTTP fault: {other:?}"),
    }
}

// --- TCP ----------------------------------------------------------------

async fn serve_tcp(client: TcpStream, sh: Arc<Shared>) {
    if sh.refusing.load(Ordering::Relaxed) {
        reset(&client);
        return;
    }
    let fault = sh.pick(TCP_FAULTS);
    if let Some(f) = fault {
        sh.count(f);
    }
    match fault {
        Some(Fault::ResetAtConnect) => {
            reset(&client);
            return;
        }
        Some(Fault::DroppedAtConnect) => return,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(sh.upstream).await else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let delay = match fault {
        Some(Fault::SlowConnection) => Duration::from_millis(sh.random_range(5..60)),
        _ => Duration::ZERO,
    };
    let mut severed = sh.severed.subscribe();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Client to server, one chunk (about one message) at a time; each may be
    // cut before it reaches the server, or after (its answer lost).
    let requests = async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let n = match cr.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let cut = sh.pick_mid_stream();
            if cut == Some(Fault::ResetMidStream) {
                return cut;
            }
            if sw.write_all(&chunk[..n]).await.is_err() {
                return None;
            }
            if cut.is_some() {
                // Let the server run it, then cut before its answer arrives.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return cut;
            }
        }
    };
    let answers = async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let n = match sr.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cw.write_all(&chunk[..n]).await.is_err() {
                return None;
            }
        }
    };
    let cut: Option<Fault> = tokio::select! {
        cut = requests => cut,
        cut = answers => cut,
        Ok(()) = severed.changed() => Some(Fault::Severed),
    };
    if let Some(f) = cut {
        sh.count(f);
        for half in [cw.as_ref(), sw.as_ref()] {
            let _ = half.set_zero_linger();
        }
    }
}
